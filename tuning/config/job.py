"""One validated, immutable JobConfig built from the parsed flag values.

Cross-flag rules live here so every problem is reported together, before anything heavy loads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tuning.config.schema import (
    LEGACY_TRAINING_FLAGS,
    SECTIONS,
    AccelerationArgs,
    DataArgs,
    ModelArgs,
    PeftArgs,
    TrackerArgs,
    TrainingExtras,
    all_flags,
)
from tuning.errors import ConfigError

_SECRET_WORDS = ("token", "password", "secret", "api_key", "apikey", "credential")
_UNBUILT_PLUGINS = ("auto_gptq", "bnb_qlora", "fused_lora", "fast_kernels", "multipack", "fast_moe")


@dataclass(frozen=True)
class JobConfig:
    """Everything one run needs, typed and validated. Never mutated after creation."""

    model: ModelArgs
    data: DataArgs
    training: TrainingExtras
    peft: PeftArgs
    acceleration: AccelerationArgs
    tracking: TrackerArgs
    hf_training: Mapping[str, Any] = field(default_factory=dict)
    explicitly_set: frozenset[str] = frozenset()
    notices: tuple[str, ...] = ()

    @property
    def padding_free(self) -> bool:
        return bool(self.training.padding_free)

    def resolved(self) -> dict[str, Any]:
        """The full configuration as plain JSON, secrets redacted (saved into output_dir)."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            out.update(getattr(self, name).model_dump(mode="json"))
        out.update(self.hf_training)
        return {key: _redact(key, value) for key, value in sorted(out.items())}


def _redact(key: str, value: Any) -> Any:
    if value is not None and any(word in key.lower() for word in _SECRET_WORDS):
        return "***"
    return value


def _section_problems(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"])
        problems.append(f"--{name}: {error['msg']} (got {error.get('input')!r}).")
    return problems


def cross_checks(job: JobConfig) -> list[str]:
    """Flag combinations that cannot work together (the data layer checks its own flags)."""
    m, d, t, p, a, tr = job.model, job.data, job.training, job.peft, job.acceleration, job.tracking
    hf = job.hf_training
    problems: list[str] = []
    if not m.model_name_or_path:
        problems.append("--model_name_or_path is required: the base model folder to tune.")
    if not t.output_dir:
        problems.append("--output_dir is required: where checkpoints and logs go.")
    if d.dataset_image_field:
        problems.append("--dataset_image_field: vision-language tuning is not built yet.")
    if p.peft_method == "alora":
        problems.append(
            "--peft_method alora is not built in tuneforge yet; use --peft_method lora."
        )
    for plugin in _UNBUILT_PLUGINS:
        if getattr(a, plugin):
            problems.append(
                f"--{plugin} is an fms acceleration-plugin flag that tuneforge does not build "
                "yet; remove it (the run would otherwise silently differ from what you asked)."
            )
    if a.trainer_controller_config_file:
        problems.append(
            "--trainer_controller_config_file (fms trainer controller) is not built in "
            "tuneforge yet; remove it."
        )
    if t.packing and job.padding_free:
        problems.append("--packing already packs padding-free; drop --padding_free.")
    if "warmup_steps" in hf and t.warmup_ratio is not None:
        problems.append("--warmup_ratio and --warmup_steps are both set; keep one.")
    if tr.exp_metadata is not None:
        try:
            if not isinstance(json.loads(tr.exp_metadata), dict):
                raise ValueError
        except ValueError:
            problems.append(
                f'--exp_metadata must be a JSON object string like \'{{"key": "value"}}\', '
                f"got {tr.exp_metadata!r}."
            )
    strategy = hf.get("eval_strategy", "no")
    if strategy not in ("no", None) and not (d.validation_data_path or d.data_config_path):
        problems.append(
            f"--eval_strategy {strategy} needs evaluation data: add --validation_data_path."
        )
    if t.save_strategy == "steps" and float(hf.get("save_steps", 500)) <= 0:
        problems.append("--save_steps must be positive with --save_strategy steps.")
    return problems


def build_job_config(values: Mapping[str, Any], *, check_combinations: bool = True) -> JobConfig:
    """Validate parsed values into a JobConfig, reporting every problem in one ConfigError.

    With check_combinations=False only types and values are checked; the caller then reports
    cross_checks(job) together with its own checks (the entry point adds data preflight).
    """
    flags = all_flags()
    by_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    hf_training: dict[str, Any] = {}
    notices: list[str] = []
    for name, value in values.items():
        spec = flags[name]
        if spec.section in by_section:
            by_section[spec.section][name] = value
        elif spec.section == "hf":
            hf_training[name] = value
        elif spec.section == "legacy":
            target = LEGACY_TRAINING_FLAGS[name]
            if target:
                hf_training[target] = value
                notices.append(f"--{name} is the older spelling of --{target}; using it as such.")
            else:
                notices.append(f"--{name} has no effect in tuneforge (kept for fms jobs).")
    problems: list[str] = []
    sections = {}
    for name, model in SECTIONS.items():
        try:
            sections[name] = model(**by_section[name])
        except ValidationError as exc:
            problems.extend(_section_problems(exc))
            sections[name] = model.model_construct(**by_section[name])
    job = JobConfig(
        **sections,
        hf_training=hf_training,
        explicitly_set=frozenset(values),
        notices=tuple(notices),
    )
    if not problems and check_combinations:
        problems = cross_checks(job)
    if problems:
        raise ConfigError(
            f"The configuration has {len(problems)} problem(s): "
            + " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        )
    return job
