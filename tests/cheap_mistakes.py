"""Cheap mistakes a new user makes: each must fail at plan time, before data or weights load.

Shared by tests/test_plan_mistakes.py (exit 1, message, nothing heavy imported, output_dir
untouched) and bench/fail_fast.py (time to the exit-1 message). Arguments may name
{model}, {io} (the input/output JSONL), {data} (data_configs/data), {out} (a fresh output_dir
that must stay untouched) and {tmp} (a scratch folder that `setup` may fill).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BASE = ("--model_name_or_path", "{model}", "--training_data_path", "{io}", "--output_dir", "{out}")


@dataclass(frozen=True)
class Mistake:
    id: str
    args: tuple[str, ...]
    match: str  # a regex the error message must match
    drop: tuple[str, ...] = ()  # base flags this case leaves out
    setup: Callable[[Path], None] | None = None


def _a_file(tmp: Path) -> None:
    (tmp / "a_file").write_text("not a folder\n")


def _unknown_handler_config(tmp: Path) -> None:
    (tmp / "data.jsonl").write_text('{"input": "a", "output": "b"}\n')
    (tmp / "cfg.yaml").write_text(
        "datasets:\n  - name: a\n    data_paths: [data.jsonl]\n"
        "    data_handlers:\n      - name: tokenize_and_apply_input_maskin\n"
    )


def _streaming_config(tmp: Path) -> None:
    (tmp / "data.jsonl").write_text('{"input": "a", "output": "b"}\n')
    (tmp / "cfg.yaml").write_text(
        "dataprocessor:\n  streaming: true\ndatasets:\n  - name: a\n    data_paths: [data.jsonl]\n"
    )


def _truncated_checkpoint(tmp: Path) -> None:
    ckpt = tmp / "checkpoint-5"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text('{"global_step": 5, "log_hist')


CASES: list[Mistake] = [
    Mistake("unknown-tracker", ("--trackers", "wandbx"), r"wandbx.*Did you mean 'wandb'"),
    Mistake("missing-tracker-extra", ("--trackers", "mlflow"), r"pip install 'tuneforge\[mlflow\]'"),
    Mistake("unknown-report-to", ("--report_to", "tensorbord"), r"tensorbord.*Did you mean 'tensorboard'"),
    Mistake("report-to-missing-extra", ("--report_to", "tensorboard"), r"tuneforge\[tensorboard\]"),
    Mistake("bad-scheduler", ("--lr_scheduler_type", "bogus"), r"lr_scheduler_type' got 'bogus'.*cosine"),
    Mistake("bad-optimizer", ("--optim", "adamw_bogus"), r"optim' got 'adamw_bogus'.*Did you mean 'adamw_"),
    Mistake("bad-eval-strategy", ("--eval_strategy", "sometimes"), r"eval_strategy' got 'sometimes': expected one of no, steps, epoch"),
    Mistake("bad-save-strategy", ("--save_strategy", "hourly"), r"save_strategy' got 'hourly': expected one of"),
    Mistake("resume-missing", ("--resume_from_checkpoint", "/nonexistent/ckpt"), r"/nonexistent/ckpt.*does not exist"),
    Mistake("resume-truncated", ("--resume_from_checkpoint", "{tmp}/checkpoint-5"), r"trainer_state.json.*not valid JSON", setup=_truncated_checkpoint),
    Mistake("negative-learning-rate", ("--learning_rate", "-1"), r"--learning_rate.*at least 0"),
    Mistake("zero-batch-size", ("--per_device_train_batch_size", "0"), r"--per_device_train_batch_size.*at least 1"),
    Mistake("zero-accumulation", ("--gradient_accumulation_steps", "0"), r"--gradient_accumulation_steps.*at least 1"),
    Mistake("zero-epochs", ("--num_train_epochs", "0"), r"--num_train_epochs.*trains nothing"),
    Mistake("zero-max-seq-length", ("--max_seq_length", "0"), r"--max_seq_length.*greater than or equal to 1"),
    Mistake("output-dir-is-file", ("--output_dir", "{tmp}/a_file"), r"--output_dir.*is a file", drop=("--output_dir",), setup=_a_file),
    Mistake("output-dir-uncreatable", ("--output_dir", "{tmp}/a_file/out"), r"--output_dir.*cannot be created", drop=("--output_dir",), setup=_a_file),
    Mistake("save-model-dir-uncreatable", ("--save_model_dir", "{tmp}/a_file/model"), r"--save_model_dir.*cannot be created", setup=_a_file),
    Mistake("lora-rank-zero", ("--peft_method", "lora", "--r", "0"), r"--r.*greater than or equal to 1"),
    Mistake("lora-dropout-too-big", ("--peft_method", "lora", "--lora_dropout", "1.5"), r"--lora_dropout.*less than 1"),
    Mistake("lora-flag-without-lora", ("--target_modules", "q_proj"), r"--target_modules.*--peft_method lora"),
    Mistake("pt-flag-with-lora", ("--peft_method", "lora", "--num_virtual_tokens", "4"), r"--num_virtual_tokens.*--peft_method pt"),
    Mistake("alora-string-without-alora", ("--alora_invocation_string", "<|x|>"), r"--alora_invocation_string is an argument of --peft_method alora"),
    Mistake("alora-without-string", ("--peft_method", "alora"), r"--peft_method alora needs --alora_invocation_string"),
    Mistake("target-parameters-with-dropout", ("--peft_method", "lora", "--target_parameters", "mlp.experts.gate_up_proj"), r"--target_parameters: .* set --lora_dropout 0"),
    Mistake("liger-without-extra-or-gpu", ("--use_liger_kernel", "true"), r"--use_liger_kernel needs the optional package 'liger-kernel'.*--use_liger_kernel needs CUDA GPUs"),
    Mistake("warmup-both", ("--warmup_ratio", "0.1", "--warmup_steps", "5"), r"--warmup_ratio and --warmup_steps"),
    Mistake("packing-and-padding-free", ("--packing", "--padding_free", "huggingface"), r"--packing already packs"),
    Mistake("config-and-path", ("--data_config", "{tmp}/cfg.yaml"), r"both set", setup=_unknown_handler_config),
    Mistake("no-training-data", (), r"no training data", drop=("--training_data_path",)),
    Mistake("unknown-flag", ("--learnin_rate", "1"), r"Did you mean 'learning_rate'"),
    Mistake("missing-model", ("--model_name_or_path", "{tmp}/nomodel"), r"nomodel.*does not exist", drop=("--model_name_or_path",)),
    Mistake("eval-without-data", ("--eval_strategy", "steps"), r"--validation_data_path"),
    Mistake("unbuilt-plugin", ("--fast_moe", "8"), r"--fast_moe"),
    Mistake("unbuilt-controller", ("--trainer_controller_config_file", "{tmp}/tc.yaml"), r"--trainer_controller_config_file.*not built"),
    Mistake("tracker-setting-without-tracker", ("--aim_repo", "{tmp}/aim"), r"--aim_repo.*--trackers aim"),
    Mistake("mlflow-setting-without-tracker", ("--mlflow_tracking_uri", "file:///x"), r"--mlflow_tracking_uri.*--trackers mlflow"),
    Mistake("bad-exp-metadata", ("--exp_metadata", "not json"), r"--exp_metadata"),
    Mistake("unknown-handler", ("--data_config", "{tmp}/cfg.yaml"), r"tokenize_and_apply_input_maskin.*Did you mean", drop=("--training_data_path",), setup=_unknown_handler_config),
    Mistake("streaming-without-max-steps", ("--data_config", "{tmp}/cfg.yaml"), r"streaming.*--max_steps", drop=("--training_data_path",), setup=_streaming_config),
    Mistake("mxfp4-on-plain-model", ("--quantization_method", "mxfp4"), r"not stored in MXFP4"),
    Mistake("response-template-absent", ("--training_data_path", "{data}/twitter_complaints.jsonl", "--dataset_text_field", "output", "--response_template", "### Nope:"), r"does not occur", drop=("--training_data_path",)),
    Mistake("launcher-key", ("--accelerate_launch_args", '{"num_processes": 2}'), r"accelerate_launch_args.*read by the launcher build/accelerate_launch.py"),
    Mistake("report-to-all", ("--report_to", "all"), r"--report_to all.*name them"),
    Mistake("logging-steps-zero", ("--logging_strategy", "steps", "--logging_steps", "0"), r"--logging_steps.*greater than 0"),
]  # fmt: skip


def argv_for(case: Mistake, values: dict[str, str]) -> list[str]:
    """The command-line flags of one case, placeholders filled."""
    base: list[str] = []
    for name, value in zip(BASE[::2], BASE[1::2], strict=True):
        if name not in case.drop:
            base += [name, value]
    return [_fill(arg, values) for arg in (*base, *case.args)]


def _fill(arg: str, values: dict[str, str]) -> str:
    for name, value in values.items():  # not str.format: arguments may hold JSON braces
        arg = arg.replace("{" + name + "}", value)
    return arg
