"""Generate the reference docs from the code, so they cannot drift from it.

`python -m tuning.tools.docs_gen` (or `make docs`) rewrites every generated doc; `--check` writes
nothing and exits 1 listing the docs that differ from what the code would generate.
tests/unit/config/test_docs_drift.py runs the same comparison.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tuning.config.parse import JSON_ENV_VAR, JSON_PATH_VAR
from tuning.config.schema import (
    LAUNCHER_KEYS,
    LEGACY_MEANINGS,
    LEGACY_TRAINING_FLAGS,
    SECTIONS,
    FlagSpec,
    all_flags,
)
from tuning.tools.markdown import GENERATED_NOTE, cell, table

REPO_ROOT = Path(__file__).resolve().parents[2]
_SECTION_TITLES = {
    "model": "Model",
    "data": "Data",
    "training": "Training",
    "peft": "PEFT (LoRA, aLoRA, prompt tuning)",
    "acceleration": "Quantization and acceleration plugins",
    "tracking": "Trackers and run metadata",
}

_INTRO = f"""\
# Flags

Every flag tuneforge accepts, generated from the schema in `tuning/config/schema.py`. Names,
spellings and defaults follow fms-hf-tuning, so an fms job runs unchanged. Parsing is strict: an
unknown flag or JSON key is an error with a did-you-mean, and every problem in a command line or
JSON job is reported in one message.

## How flags are given

- **Command line**: `--name value` or `--name=value`. Dashes and underscores are interchangeable
  in names (`--learning-rate` is `--learning_rate`).
- **Lists** take several values after one flag, `--target_modules q_proj v_proj`, or one JSON
  list, `--target_modules '["q_proj", "v_proj"]'`. A single value is a one-item list.
- **Booleans**: a bare `--packing` means true; `--packing false` (or `true`, `1`, `0`, `yes`,
  `no`) sets it explicitly.
- **Mappings** (type `json`) take a JSON object: `--lr_scheduler_kwargs '{{"min_lr_rate": 0.1}}'`.
- **Unset**: `none` or `null` clears an optional value, except where `none` is itself one of the
  flag's choices (`--peft_method none`) or an item of a list (`--trackers none`).
- **JSON job**: containerised jobs put the same names as keys of one JSON object, in a file named
  by `{JSON_PATH_VAR}`, or base64-encoded (`base64 -w0 config.json`) in
  `{JSON_ENV_VAR}`; the base64 variable wins when both are set. Values keep their JSON types
  (`"target_modules": ["q_proj", "v_proj"]`, `"packing": true`). Flags given on the command line
  override the JSON job's keys. A job file ending in `.yaml` or `.yml` is read as YAML, with the
  same keys and the same strictness.
- **Checked before anything loads**: every flag is planned (types, choices, ranges, combinations,
  paths, trackers and their packages, the data config and the first rows of the data) before
  any data is tokenized or weights load; all problems are reported in one message. A flag is
  always used by something or refused: one that would do nothing says so.
- **Step counts**: `--logging_steps`, `--save_steps` or `--eval_steps` given with their strategy
  left at its default switch that strategy to `steps`, with one notice (`--logging_steps 1`
  means per-step logs).
- **Templates** (`response_template`, `instruction_template`, `data_formatter_template`,
  `chat_template`) have backslash escapes decoded, so `--response_template '\\n### Response:'`
  starts with a real newline.

Types below: `str`, `int`, `float`, `bool`, `list[...]`, `json` (a JSON object or a path to a
JSON file, as TrainingArguments allows), with the accepted choices where there is a fixed set.
A default of `unset` means the flag is optional and has no value unless given.
"""


_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)\.(?=\s+[A-Z0-9`'\"(])")


def first_sentence(text: str) -> str:
    """The help text's first sentence (abbreviations such as 'e.g.' do not end one)."""
    text = " ".join(text.split())
    match = _SENTENCE_END.search(text)
    return text[: match.end()] if match else text


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    return f"`{json.dumps(value)}`"


def _type(spec: FlagSpec) -> str:
    if spec.kind == "list":
        kind = f"list[{spec.list_item}]"
    elif spec.kind == "padding_free":
        kind = "list[str]: `huggingface` or a boolean"
    else:
        kind = spec.kind
    if spec.choices:
        kind += ": " + " | ".join(f"`{choice}`" for choice in spec.choices)
    return kind


def _flag(spec: FlagSpec) -> str:
    text = f"`--{spec.name}`"
    if spec.aliases:
        text += " (also " + ", ".join(f"`--{alias}`" for alias in spec.aliases) + ")"
    return text


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith((".", "!", "?")) else text + "."


def _attention_section() -> list[str]:
    """The attention registry: what --flash_attn_implementation accepts."""
    from tuning.models.attention import ATTENTION

    lines = [
        "",
        "## Attention implementations",
        "",
        "`--flash_attn_implementation` takes these names, or a hub kernel "
        "`owner/name[@revision][:function]` (needs the `kernels` extra and a CUDA GPU; `fa3` is "
        "`kernels-community/flash-attn3`). With `--use_flash_attn true` one that cannot run falls "
        "back to flash_attention_2, then sdpa (eager for architectures without sdpa), with one "
        "warning; see models.md.",
        "",
    ]
    rows = [
        (f"`{name}`", ", ".join(f"`{a}`" for a in aliases.split(", ") if a) or "", cell(doc))
        for name, aliases, doc in ATTENTION.doc_rows()
    ]
    return lines + table(("implementation", "short name", "what it is"), rows)


def _trackers_section() -> list[str]:
    """The tracker registry: what --trackers and --report_to accept."""
    from tuning.trackers.registry import TRACKERS

    entries = TRACKERS.entries()
    lines = [
        "",
        "## Trackers",
        "",
        "`--trackers` and `--report_to` take the same names (one registry); every value of either "
        "is used or is an error. A tracker's settings given without the tracker are an error too. "
        "Only the main process reports.",
        "",
    ]
    rows = []
    for name, _, doc in TRACKERS.doc_rows():
        info = entries[name]
        install = f"`pip install 'tuneforge[{info.extra}]'`" if info.extra else "built in"
        settings = ", ".join(f"`--{flag}`" for flag in info.settings) or "none"
        rows.append((f"`{name}`", install, settings, cell(doc)))
    return lines + table(("tracker", "needs", "settings", "what it does"), rows)


def render_flags_markdown() -> str:
    """docs/flags.md: how flags are given, then one table per schema section."""
    flags = all_flags()
    lines = [GENERATED_NOTE, "", _INTRO.rstrip("\n")]
    for section, model in SECTIONS.items():
        specs = [spec for spec in flags.values() if spec.section == section]
        lines += ["", f"## {_SECTION_TITLES.get(section, section)}", ""]
        lines += [_sentence(model.__doc__ or ""), ""]
        lines += table(
            ("flag", "type", "default", "description"),
            [
                (_flag(spec), cell(_type(spec)), _default(spec.default), cell(spec.help))
                for spec in specs
            ],
        )

    lines += _attention_section()
    lines += _trackers_section()
    passthrough = [spec for spec in flags.values() if spec.section == "hf"]
    lines += [
        "",
        "## TrainingArguments pass-through",
        "",
        "Every other field of `transformers.TrainingArguments` is accepted under its own name and "
        "passed through unchanged. The list comes from the snapshot "
        "`tuning/config/hf_training_args.json`; only the first sentence of each help text is "
        "shown here, see the transformers documentation for the rest. Fields listed in the "
        "sections above (such as `save_strategy`, `logging_strategy` and "
        "`resume_from_checkpoint`) take tuneforge's definition instead.",
        "",
    ]
    lines += table(
        ("flag", "type", "default", "description"),
        [
            (
                f"`--{spec.name}`",
                spec.kind,
                _default(spec.default),
                cell(first_sentence(spec.help)),
            )
            for spec in sorted(passthrough, key=lambda spec: spec.name)
        ],
    )

    lines += [
        "",
        "## Launcher keys",
        "",
        "Keys of the JSON job that the container's launcher (`build/accelerate_launch.py`, see "
        "distributed.md) reads and takes out before the trainer sees the job. Given to the trainer "
        "directly, they are refused rather than ignored.",
        "",
    ]
    lines += table(
        ("key", "description"),
        [(f"`{name}`", cell(text)) for name, text in LAUNCHER_KEYS.items()],
    )

    lines += [
        "",
        "## Legacy spellings",
        "",
        "TrainingArguments fields that transformers 5 removed but fms jobs still pass. They are "
        "accepted so such jobs parse.",
        "",
    ]
    lines += table(
        ("flag", "meaning"),
        [
            (
                f"`--{name}`",
                f"Older spelling of `--{target}`." if target else cell(LEGACY_MEANINGS[name]),
            )
            for name, target in LEGACY_TRAINING_FLAGS.items()
        ],
    )
    return "\n".join(lines) + "\n"


def render_data_config_markdown() -> str:
    """The schema reference, then the shipped configs verbatim as worked examples."""
    from tuning.tools.data_docs import dump_schema_markdown

    parts = [
        "# Data config reference",
        "",
        "A data config (YAML or JSON, `--data_config FILE`) names datasets, the chain of handlers "
        "that turns each row into tokens and labels, and how datasets are mixed and split. "
        "Relative paths resolve against the config file's folder. Unknown keys are errors. "
        "Handlers are listed in [handlers.md](handlers.md).",
        "",
        "Older fms-hf-tuning shapes still run, each with a one-line notice: a top-level "
        "`chat_template` is used as `dataprocessor.chat_template`, and a dataset's "
        "`rename_columns` / `retain_columns` run as the rename_columns / select_columns handlers "
        "before its `data_handlers`.",
        "",
        dump_schema_markdown().rstrip("\n"),
        "",
        "## Worked examples (the shipped configs in `data_configs/`)",
        "",
        "Each runs as shipped; `tests/e2e/test_shipped_data_configs.py` trains on every one.",
    ]
    for path in sorted((REPO_ROOT / "data_configs").glob("*.yaml")):
        parts += [
            "",
            f"### `data_configs/{path.name}`",
            "",
            "```yaml",
            path.read_text().rstrip(),
            "```",
        ]
    return "\n".join(parts) + "\n"


def generated_docs() -> dict[str, Callable[[], str]]:
    """Every generated doc: path relative to the repository root -> its render function."""
    from tuning.tools.data_docs import render_handlers_markdown

    return {
        "docs/flags.md": render_flags_markdown,
        "docs/data-config.md": render_data_config_markdown,
        "docs/handlers.md": render_handlers_markdown,
    }


def _normalised(text: str) -> str:
    return text.rstrip("\n") + "\n"


def drifted(root: Path, docs: dict[str, Callable[[], str]]) -> list[str]:
    """The docs under root whose content differs from (or lacks) what the code generates."""
    stale = []
    for relative, render in docs.items():
        path = root / relative
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current != _normalised(render()):
            stale.append(relative)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tuning.tools.docs_gen", description="Write the generated docs."
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 listing the docs that are out of date",
    )
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    parser.add_argument(
        "only", nargs="*", help="only these docs (paths relative to the root); default: all"
    )
    args = parser.parse_args(argv)
    docs = generated_docs()
    unknown = [path for path in args.only if path not in docs]
    if unknown:
        parser.error(f"not a generated doc: {', '.join(unknown)} (known: {', '.join(docs)})")
    if args.only:
        docs = {path: docs[path] for path in args.only}

    if args.check:
        stale = drifted(args.root, docs)
        for relative in stale:
            print(f"out of date: {relative}")
        if stale:
            print("Run `make docs` (python -m tuning.tools.docs_gen) and commit the result.")
            return 1
        print(f"{len(docs)} generated doc(s) up to date.")
        return 0

    for relative, render in docs.items():
        path = args.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_normalised(render()), encoding="utf-8", newline="\n")
        print(f"wrote {relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
