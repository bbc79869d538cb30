"""The training slice of the run plan: TrainingArguments with their choices and ranges, step
strategies, the resume target, output paths, trackers and the flags tuneforge does not build.

Imports nothing heavy: TrainingArguments is known from the snapshot (tuning/config), trackers
from their registry, optional packages from tuneforge's own extras (tuning/extras.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuning.config.job import JobConfig
from tuning.config.launch_env import gpus_visible
from tuning.config.schema import LAUNCHER_KEYS, hf_training_fields
from tuning.data.plan import DataPlan
from tuning.extras import extra_problem
from tuning.problems import Problems
from tuning.trackers.plan import build_tracker_plans
from tuning.trackers.registry import TrackerPlan
from tuning.training.distributed import LaunchDecision
from tuning.training.resume import resolve_resume

UNBUILT_PLUGINS = ("auto_gptq", "bnb_qlora", "fused_lora", "fast_kernels", "multipack", "fast_moe")
# (strategy flag, its step-count flag): an explicit count with the strategy left at its default
# switches the strategy to "steps" (fms's documented `--logging_steps 1` means per-step logs).
STEP_STRATEGIES = (
    ("logging_strategy", "logging_steps"),
    ("save_strategy", "save_steps"),
    ("eval_strategy", "eval_steps"),
)
# TrainingArguments values that make no sense below a bound: flag -> lowest allowed value.
LOWER_BOUNDS = {
    "learning_rate": 0.0,
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "eval_accumulation_steps": 1,
    "warmup_steps": 0.0,
    "weight_decay": 0.0,
    "max_grad_norm": 0.0,
    "dataloader_num_workers": 0,
    "save_total_limit": 1,
    "seed": 0,
}
# TrainingArguments values that need an optional extra: flag -> (extra, GPU only)
EXTRA_FLAGS = {"deepspeed": ("deepspeed", True), "use_liger_kernel": ("liger", True)}


@dataclass(frozen=True)
class TrainPlan:
    """What the training stage runs, complete: SFTConfig keyword arguments included."""

    output_dir: str
    arguments: Mapping[str, Any]  # TrainingArguments values (fms defaults, strategies, trackers)
    max_seq_length: int
    max_seq_length_explicit: bool  # not the fms default: capping it deserves a warning
    resume_from: str | None
    save_model_dir: str | None
    packing: bool
    padding_free: bool
    pad_to_multiple_of: int | None
    enable_reduce_loss_sum: bool
    cache_dir: str | None
    trackers: tuple[TrackerPlan, ...]
    exp_metadata: Mapping[str, Any] | None
    experiment: str | None
    process_data_only: bool
    train_shards: int | None
    eval_shards: int | None
    fsdp_off: bool = False  # FSDP asked by the launch, none possible here: train as CPU DDP


def _value(job: JobConfig, name: str) -> Any:
    """A TrainingArguments value: the job's (fms's own default or pass-through) or the default."""
    if name in type(job.training).model_fields:
        return getattr(job.training, name)
    if name in job.hf_training:
        return job.hf_training[name]
    return hf_training_fields().get(name, {}).get("default")


def _strategies(job: JobConfig, problems: Problems) -> tuple[dict[str, Any], list[str]]:
    """The step strategies after the default-switch rule, and the notices it gives."""
    chosen: dict[str, Any] = {}
    notices = []
    for strategy, steps in STEP_STRATEGIES:
        value = _value(job, strategy)
        if steps in job.explicitly_set and strategy not in job.explicitly_set and value != "steps":
            notices.append(
                f"--{steps} {job.hf_training[steps]} is set but --{strategy} was left at its "
                f"default ({value!r}), which would ignore it: using --{strategy} steps."
            )
            value = "steps"
        chosen[strategy] = value
        count = _value(job, steps)
        if value == "steps" and count is not None and float(count) <= 0:
            problems.add(
                f"--{steps} must be greater than 0 with --{strategy} steps (got {count}); "
                "values below 1 are a fraction of the total steps."
            )
    return chosen, notices


def _extra_problems(job: JobConfig) -> list[str]:
    problems = []
    for flag, (extra, gpu_only) in EXTRA_FLAGS.items():
        if not job.hf_training.get(flag):
            continue
        problems += [p for p in [extra_problem(extra, f"--{flag}")] if p]
        if gpu_only and not gpus_visible():
            problems.append(f"--{flag} needs CUDA GPUs and none are visible; drop it here.")
    return problems


def _range_problems(job: JobConfig) -> list[str]:
    problems = []
    for name, lowest in LOWER_BOUNDS.items():
        value = job.hf_training.get(name)
        if value is not None and value < lowest:
            problems.append(f"--{name} must be at least {lowest:g} (got {value}).")
    max_steps = int(_value(job, "max_steps") or -1)
    epochs = float(_value(job, "num_train_epochs"))
    if max_steps == 0 or (max_steps < 0 and epochs <= 0):
        flag = "--max_steps" if max_steps == 0 else "--num_train_epochs"
        problems.append(
            f"{flag} {max_steps if max_steps == 0 else epochs:g} trains nothing; set "
            "--num_train_epochs above 0 or --max_steps to a positive count."
        )
    if "warmup_steps" in job.hf_training and job.training.warmup_ratio is not None:
        problems.append("--warmup_ratio and --warmup_steps are both set; keep one.")
    return problems


def _path_problem(flag: str, value: str) -> str | None:
    """Whether a folder the run writes can be written (an existing one, or made)."""
    path = Path(value).expanduser()
    if path.is_file():
        return f"--{flag} {value!r} is a file; give a folder (it is created if missing)."
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"--{flag} {value!r} cannot be created: {probe} is a file, not a folder."
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"--{flag} {value!r} cannot be created or written: {probe} is not writable."
    return None


def _exp_metadata(job: JobConfig, problems: Problems) -> Mapping[str, Any] | None:
    text = job.tracking.exp_metadata
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        problems.add(
            f'--exp_metadata must be a JSON object string like \'{{"key": "value"}}\', got '
            f"{text!r}."
        )
        return None
    return value


def _refused(job: JobConfig) -> list[str]:
    """Accepted flags that would do nothing here (features not built yet, settings tuneforge
    decides itself): stop, never ignore them."""
    a = job.acceleration
    problems = [
        f"--{plugin} is an fms acceleration-plugin flag that tuneforge does not build yet; "
        "remove it (the run would otherwise silently differ from what you asked)."
        for plugin in UNBUILT_PLUGINS
        if getattr(a, plugin)
    ]
    if a.trainer_controller_config_file:
        problems.append(
            "--trainer_controller_config_file (fms trainer controller) is not built in "
            "tuneforge yet; remove it, and use --max_steps / --save_strategy to bound the run."
        )
    if job.data.dataset_image_field:
        problems.append("--dataset_image_field: vision-language tuning is not built yet.")
    if job.legacy.get("save_safetensors") is False:
        problems.append(
            "--save_safetensors false: transformers 5 always saves safetensors; drop the flag."
        )
    if "remove_unused_columns" in job.hf_training:
        problems.append(
            "--remove_unused_columns: tuneforge hands the trainer exactly the columns it "
            "prepared (input_ids, labels), so this flag cannot apply; drop it."
        )
    for key in LAUNCHER_KEYS:
        if key in job.explicitly_set:
            problems.append(
                f"`{key}` is read by the launcher build/accelerate_launch.py (the container's "
                "entry point), which takes it out before the trainer sees the job; running the "
                "trainer directly cannot use it. Run the job through the launcher, or drop the "
                "key."
            )
    return problems


def _data_problems(job: JobConfig, data: DataPlan | None, strategies: Mapping[str, Any]) -> list:
    """What the training flags need from the data."""
    if data is None:
        return []
    problems = []
    evaluates = any(
        spec.split is not None and spec.split.validation > 0 for spec in data.config.datasets
    )
    if strategies["eval_strategy"] not in ("no", None) and not evaluates:
        cause = f"--eval_strategy {strategies['eval_strategy']}"
        if "eval_strategy" not in job.explicitly_set:
            cause = f"--eval_steps {job.hf_training.get('eval_steps')} (so {cause})"
        problems.append(
            f"{cause} needs evaluation data: add --validation_data_path (or a validation split "
            "in the data config)."
        )
    only = job.data.do_dataprocessing_only
    if data.streaming and not only and int(_value(job, "max_steps") or -1) <= 0:
        problems.append(
            "The data config streams its data (streaming: true), so the number of steps "
            "cannot be known in advance: set --max_steps."
        )
    if data.streaming and job.training.packing:
        problems.append(
            "--packing needs the whole dataset to pack it best-fit; it cannot pack a stream "
            "(streaming: true). Use --padding_free huggingface instead, or drop streaming."
        )
    return problems


def build_train_plan(
    job: JobConfig,
    data: DataPlan | None,
    problems: Problems,
    launch: LaunchDecision | None = None,
) -> tuple[TrainPlan | None, list[str]]:
    """The training slice (None when output_dir is missing) and its notices; `launch` is what
    the launch environment changes (CPU DDP, context-parallel padding)."""
    launch = launch or LaunchDecision()
    t = job.training
    if not t.output_dir:
        problems.add("--output_dir is required: where checkpoints and logs go.")
    strategies, notices = _strategies(job, problems)
    problems.extend(_range_problems(job))
    problems.extend(_extra_problems(job))
    problems.extend(_refused(job))
    problems.extend(_data_problems(job, data, strategies))
    if t.packing and job.padding_free:
        problems.add("--packing already packs padding-free; drop --padding_free.")
    trackers = build_tracker_plans(job, problems)
    metadata = _exp_metadata(job, problems)
    for flag in ("output_dir", "save_model_dir"):
        value = getattr(t, flag)
        if value:
            problems.add(_path_problem(flag, value))
    resume_flag = t.resume_from_checkpoint
    if job.legacy.get("overwrite_output_dir") and resume_flag is None:
        resume_flag = "false"
        notices.append(
            "--overwrite_output_dir true: starting fresh; checkpoints already in output_dir are "
            "not resumed (set --resume_from_checkpoint to resume one)."
        )
    resume, problem = resolve_resume(t.output_dir or ".", resume_flag)
    problems.add(problem)
    if not t.output_dir:
        return None, notices
    arguments = {k: v for k, v in job.hf_training.items() if k != "report_to"}
    arguments.update(strategies)
    if t.warmup_ratio is not None:
        arguments["warmup_steps"] = t.warmup_ratio  # a fraction below 1 is a ratio
    report_to = [tracker.report_to for tracker in trackers if tracker.report_to]
    arguments["report_to"] = report_to or ["none"]
    if job.tracking.experiment and "run_name" not in arguments:
        arguments["run_name"] = job.tracking.experiment
    if launch.use_cpu:
        arguments["use_cpu"] = True
    plan = TrainPlan(
        output_dir=t.output_dir,
        arguments=arguments,
        max_seq_length=t.max_seq_length,
        max_seq_length_explicit=t.max_seq_length != type(t).model_fields["max_seq_length"].default,
        resume_from=resume,
        save_model_dir=t.save_model_dir,
        packing=t.packing,
        padding_free=job.padding_free,
        pad_to_multiple_of=launch.pad_to_multiple_of or t.pad_to_multiple_of,
        enable_reduce_loss_sum=t.enable_reduce_loss_sum,
        cache_dir=t.cache_dir,
        trackers=trackers,
        exp_metadata=metadata,
        experiment=job.tracking.experiment,
        process_data_only=job.data.do_dataprocessing_only,
        train_shards=job.data.num_train_dataset_shards,
        eval_shards=job.data.num_eval_dataset_shards,
        fsdp_off=launch.fsdp_off,
    )
    return plan, notices
