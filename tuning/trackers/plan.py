"""The trackers slice of the training plan: --trackers and --report_to resolved in one registry,
packages checked, settings given without their tracker refused, Aim/MLflow settings resolved."""

from __future__ import annotations

from typing import Any

from tuning.config.job import JobConfig
from tuning.config.schema import TrackerArgs
from tuning.errors import ConfigError
from tuning.extras import extra_problem
from tuning.problems import Problems
from tuning.trackers.registry import TRACKERS, TrackerInfo, TrackerPlan


def build_tracker_plans(job: JobConfig, problems: Problems) -> tuple[TrackerPlan, ...]:
    """--trackers and --report_to resolved in one registry; packages and settings checked."""
    names = [*job.tracking.trackers, *(job.hf_training.get("report_to") or [])]
    chosen: dict[str, TrackerInfo] = {}
    for name in names:
        lowered = name.lower()
        if lowered == "all":
            problems.add(
                "--report_to all would start every tracker that happens to be installed; name "
                "them: --trackers " + " ".join(n for n in TRACKERS.entries() if n != "none") + "."
            )
            continue
        try:
            chosen.setdefault(lowered, TRACKERS.resolve(lowered))
        except ConfigError as exc:
            problems.add(f"--trackers/--report_to: {exc}")
    if "none" in chosen:
        chosen = {}
    for info in chosen.values():
        if info.extra:
            problems.add(extra_problem(info.extra, f"--trackers {info.name}"))
    for info in TRACKERS.entries().values():
        for flag in info.settings:
            if info.name not in chosen and _setting(job, flag) != _setting_default(flag):
                problems.add(
                    f"--{flag} configures the {info.name} tracker, which is not selected: add "
                    f"--trackers {info.name} (with the others you want) or drop --{flag}."
                )
    return tuple(_tracker_plan(info, job, problems) for info in chosen.values())


def _setting(job: JobConfig, flag: str) -> Any:
    """A tracker setting: a tracking flag, or an older TrainingArguments one (logging_dir)."""
    if flag in type(job.tracking).model_fields:
        return getattr(job.tracking, flag)
    return job.legacy.get(flag)


def _setting_default(flag: str) -> Any:
    field = TrackerArgs.model_fields.get(flag)
    return field.default if field is not None else None


def _tracker_plan(info: TrackerInfo, job: JobConfig, problems: Problems) -> TrackerPlan:
    t = job.tracking
    settings: dict[str, Any] = {flag: _setting(job, flag) for flag in info.settings}
    if info.name == "aim":
        remote = t.aim_remote_server_ip, t.aim_remote_server_port
        if any(v is not None for v in remote) and None in remote:
            problems.add("--aim_remote_server_ip and --aim_remote_server_port go together.")
        servers = [v for v in (t.aim_url, t.aim_repo, t.aim_remote_server_ip) if v]
        if len(servers) > 1:
            problems.add("--aim_repo, --aim_url and --aim_remote_server_ip each say where the Aim "
                         "runs go; keep one.")  # fmt: skip
        ip_url = f"aim://{t.aim_remote_server_ip}:{t.aim_remote_server_port}"
        settings["repo"] = t.aim_url or (ip_url if t.aim_remote_server_ip else t.aim_repo)
        settings["experiment"] = t.aim_experiment or t.experiment
        settings["export_dir"] = t.run_uri_export_path or job.training.output_dir
    if info.name == "mlflow":
        if not t.mlflow_tracking_uri:
            problems.add(
                "--trackers mlflow needs --mlflow_tracking_uri (e.g. file:///path/mlruns or "
                "http://host:5000)."
            )
        settings["mlflow_experiment"] = t.mlflow_experiment or t.experiment
    return TrackerPlan(info.name, info.report_to, settings)
