"""--help text, generated from the flag schema."""

from __future__ import annotations

from tuning.config.schema import SECTIONS, all_flags


def print_help() -> None:
    flags = all_flags()
    print(
        "usage: python -m tuning.sft_trainer --model_name_or_path M --output_dir O "
        "(--training_data_path F | --data_config Y) [flags]\n"
    )
    print(
        "A JSON job may be given in $SFT_TRAINER_CONFIG_JSON_PATH or base64 in "
        "$SFT_TRAINER_CONFIG_JSON_ENV_VAR; flags override its keys. docs/flags.md has it all.\n"
    )
    for section, model in SECTIONS.items():
        print(f"{section}: {(model.__doc__ or '').strip()}")
        for name in model.model_fields:
            spec = flags[name]
            aliases = "".join(f", --{a}" for a in spec.aliases)
            print(f"  --{name}{aliases}  [{spec.kind}, default {spec.default!r}]  {spec.help}")
        print()
    print("Every transformers.TrainingArguments flag is accepted too (see docs/flags.md).")
