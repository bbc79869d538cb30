"""The run plan: flags, JSON job and data config compiled into one frozen plan, or one
ConfigError listing every problem found.

Planning imports no torch, transformers or datasets, loads no weights and writes nothing; it is
the only place user-fixable problems are found. Each layer plans its own slice (data, model,
training) into one shared problems collector; executors take their slice and re-validate
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tuning.config.job import JobConfig
from tuning.config.launch_env import LaunchEnv, read_launch_env
from tuning.data.plan import DataPlan, build_data_plan
from tuning.models.plan import ModelPlan, build_model_plan
from tuning.problems import Problems
from tuning.training.distributed import launch_decision
from tuning.training.plan import TrainPlan, build_train_plan


@dataclass(frozen=True)
class RunPlan:
    """Everything one run does, decided before anything heavy happens."""

    data: DataPlan
    model: ModelPlan
    train: TrainPlan
    notices: tuple[str, ...]
    resolved: Mapping[str, Any]  # the configuration as it runs, secrets redacted
    launch: LaunchEnv = field(default_factory=LaunchEnv)


def build_plan(job: JobConfig, environ: Mapping[str, str] | None = None) -> RunPlan:
    """Compile a parsed job (and the launch environment this process was started in) into a
    RunPlan; raise one ConfigError with every problem."""
    problems = Problems()
    launch = read_launch_env(environ)
    decision = launch_decision(job, launch)
    problems.extend(decision.problems)
    seed = int(job.hf_training.get("seed", 42))
    data = build_data_plan(job.data, seed, problems)
    model = build_model_plan(job, problems, sdpa_only=decision.sdpa)
    train, notices = build_train_plan(job, data, problems, decision)
    problems.raise_if_any("The job")
    assert data is not None and model is not None and train is not None
    # what ran, as a job that plans to the same plan: the strategies the plan settled on
    strategies = {k: train.arguments[k] for k in ("logging_strategy", "save_strategy")}
    if "eval_strategy" in job.hf_training or train.arguments["eval_strategy"] != "no":
        strategies["eval_strategy"] = train.arguments["eval_strategy"]
    resolved = {**job.resolved(), **strategies}
    all_notices = (*job.notices, *decision.notices, *notices)
    return RunPlan(data, model, train, all_notices, dict(sorted(resolved.items())), launch)
