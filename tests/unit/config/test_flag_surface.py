"""The public flag set changes only on purpose, and every fms flag parses.

Why: the CLI is a compatibility promise to fms-hf-tuning jobs (FMS_COMPAT.md). A renamed,
removed or retyped flag breaks jobs silently unless a test makes the change visible. To change
the surface deliberately, run

    UPDATE_FLAG_SURFACE=1 .venv/bin/python -m pytest tests/unit/config/test_flag_surface.py

and commit tests/unit/config/flag_surface.txt with the change that needed it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from tuning.config.parse import parse_cli, parse_json_object
from tuning.config.schema import alias_table, all_flags

SURFACE_FILE = Path(__file__).with_name("flag_surface.txt")
UPDATE_HOW = (
    "If the change is deliberate, run `UPDATE_FLAG_SURFACE=1 .venv/bin/python -m pytest "
    "tests/unit/config/test_flag_surface.py` and commit tests/unit/config/flag_surface.txt "
    "(and regenerate docs with `make docs`)."
)


def current_surface() -> str:
    """One line per flag: name kind section aliases (comma separated, '-' when none)."""
    lines = [
        f"{spec.name} {spec.kind} {spec.section} {','.join(spec.aliases) or '-'}"
        for spec in sorted(all_flags().values(), key=lambda spec: spec.name)
    ]
    return "\n".join(lines) + "\n"


def test_flag_surface_matches_snapshot():
    surface = current_surface()
    if os.environ.get("UPDATE_FLAG_SURFACE") == "1":
        SURFACE_FILE.write_text(surface, encoding="utf-8")
    committed = SURFACE_FILE.read_text(encoding="utf-8") if SURFACE_FILE.is_file() else ""
    if committed != surface:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                surface.splitlines(keepends=True),
                "flag_surface.txt (committed)",
                "flag surface (code)",
            )
        )
        pytest.fail(f"The public flag set changed.\n{diff}\n{UPDATE_HOW}")


# FMS_COMPAT.md's "full fms flag surface", each with a plausible command-line value
# ([] = a bare boolean flag).
FMS_FLAGS: dict[str, list[str]] = {
    # model
    "model_name_or_path": ["ibm-granite/granite-3.1-8b-instruct"],
    "use_flash_attn": ["false"],
    "torch_dtype": ["bfloat16"],
    "embedding_size_multiple_of": ["64"],
    "tokenizer_name_or_path": ["/models/tokenizer"],
    "flash_attn_implementation": ["fa2"],
    # data
    "training_data_path": ["/data/train.jsonl"],
    "validation_data_path": ["/data/valid.jsonl"],
    "dataset_text_field": ["output"],
    "dataset_conversation_field": ["messages"],
    "data_formatter_template": ["### Input: {{input}} \\n\\n### Response: {{output}}"],
    "data_config_path": ["/configs/data.yaml"],
    "chat_template": ["{% for m in messages %}{{ m['content'] }}{% endfor %}"],
    "response_template": ["\\n### Response:"],
    "instruction_template": ["\\n### Input:"],
    "dataset_image_field": ["image"],
    "add_special_tokens": ["<|start|>", "<|end|>"],
    "do_dataprocessing_only": [],
    "num_train_dataset_shards": ["4"],
    "num_eval_dataset_shards": ["1"],
    # training additions
    "cache_dir": ["/tmp/cache"],
    "max_seq_length": ["1024"],
    "packing": ["true"],
    "save_model_dir": ["/out/final"],
    "trackers": ["file_logger", "aim"],
    "enable_reduce_loss_sum": [],
    # peft
    "peft_method": ["lora"],
    "r": ["16"],
    "lora_r": ["16"],
    "lora_alpha": ["32"],
    "lora_dropout": ["0.05"],
    "target_modules": ["q_proj", "v_proj"],
    "exclude_modules": ["lm_head"],
    "layers_to_transform": ["0", "1", "2"],
    "layers_pattern": ["layers"],
    "modules_to_save": ["embed_tokens", "lm_head"],
    "use_dora": ["true"],
    "use_rslora": [],
    "init_lora_weights": ["gaussian"],
    "prompt_tuning_init": ["RANDOM"],
    "num_virtual_tokens": ["20"],
    "prompt_tuning_init_text": ["Classify the sentiment:"],
    "alora_invocation_string": ["<|start_of_role|>assistant<|end_of_role|>"],
    # quantization and acceleration
    "quantization_method": ["mxfp4"],
    "dequantize": ["true"],
    "auto_gptq": ["triton_v2"],
    "bnb_qlora": ["nf4"],
    "fused_lora": ["auto_gptq", "true"],
    "fast_kernels": ["True", "True", "True"],
    "padding_free": ["huggingface"],
    "multipack": ["16"],
    "fast_moe": ["1"],
    # trackers
    "experiment": ["my-experiment"],
    "run_uri_export_path": ["/out/run_uri.txt"],
    "aim_experiment": ["aim-exp"],
    "aim_repo": ["/aim"],
    "aim_remote_server_ip": ["10.0.0.1"],
    "aim_remote_server_port": ["53800"],
    "aim_url": ["aim://10.0.0.1:53800"],
    "mlflow_experiment": ["mlflow-exp"],
    "mlflow_tracking_uri": ["http://mlflow:5000"],
    "training_logs_filename": ["logs.jsonl"],
    "exp_metadata": ['{"team": "nlp"}'],
    "trainer_controller_config_file": ["/configs/controller.yaml"],
    # fms's argparse-prefix spellings
    "data_config": ["/configs/data.yaml"],
    "tracker": ["aim"],
    "warmup_ratio": ["0.03"],
    "lr_scheduler_kwargs": ['{"min_lr_rate": 0.1}'],
    # common TrainingArguments
    "output_dir": ["/out"],
    "num_train_epochs": ["3"],
    "max_steps": ["100"],
    "per_device_train_batch_size": ["4"],
    "per_device_eval_batch_size": ["4"],
    "gradient_accumulation_steps": ["4"],
    "learning_rate": ["1e-5"],
    "weight_decay": ["0.0"],
    "warmup_steps": ["10"],
    "lr_scheduler_type": ["cosine"],
    "optim": ["adamw_torch"],
    "max_grad_norm": ["1.0"],
    "logging_strategy": ["steps"],
    "logging_steps": ["1"],
    "save_strategy": ["steps"],
    "save_steps": ["50"],
    "save_total_limit": ["2"],
    "eval_strategy": ["epoch"],
    "eval_steps": ["50"],
    "gradient_checkpointing": ["true"],
    "gradient_checkpointing_kwargs": ['{"use_reentrant": false}'],
    "bf16": [],
    "fp16": ["false"],
    "seed": ["42"],
    "report_to": ["none"],
    "resume_from_checkpoint": ["false"],
    "dataloader_num_workers": ["2"],
    "load_best_model_at_end": ["false"],
    "metric_for_best_model": ["loss"],
    "log_level": ["info"],
    "torch_compile": ["false"],
    "fsdp": ["full_shard auto_wrap"],
    "fsdp_config": ["/configs/fsdp.json"],
    "include_num_input_tokens_seen": ["no"],
    "evaluation_strategy": ["epoch"],
}


@pytest.mark.parametrize("name", sorted(FMS_FLAGS))
def test_fms_flag_is_accepted_on_the_command_line(name):
    values = parse_cli([f"--{name}", *FMS_FLAGS[name]])
    canonical = alias_table()[name]
    assert list(values) == [canonical]
    assert values[canonical] is not None


@pytest.mark.parametrize("name", sorted(FMS_FLAGS))
def test_fms_flag_is_accepted_as_a_json_key(name):
    raw = FMS_FLAGS[name]
    spec = all_flags()[alias_table()[name]]
    value = raw if spec.kind in {"list", "padding_free"} else (raw[0] if raw else True)
    assert alias_table()[name] in parse_json_object({name: value}, "test job")


def test_fms_flags_parse_together_in_one_command_line():
    # Aliases are left out: giving a flag under two spellings is an error of its own.
    argv: list[str] = []
    for name, values in FMS_FLAGS.items():
        if alias_table()[name] == name:
            argv += [f"--{name}", *values]
    parsed = parse_cli(argv)
    assert set(parsed) == {name for name in FMS_FLAGS if alias_table()[name] == name}
