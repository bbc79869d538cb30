"""The tracker registry: each tracker with the package it needs and the flags that configure it.

`--trackers` and `--report_to` name entries of the same registry, so every value of either is
honoured or is a clear error. Planning resolves names, checks the package is installed and that
no tracker's settings are given without the tracker; nothing here imports a tracker package.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tuning.registry import Registry


@dataclass(frozen=True)
class TrackerInfo:
    """One tracker: how it is driven and which flags belong to it."""

    name: str
    doc: str
    extra: str | None = None  # pip install 'tuneforge[extra]'; checked at plan time
    report_to: str | None = None  # the transformers integration that drives it, if any
    settings: tuple[str, ...] = ()  # flags that configure this tracker only
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrackerPlan:
    """One tracker to run, with its own settings."""

    name: str
    report_to: str | None
    settings: Mapping[str, Any] = field(default_factory=dict)


TRACKERS: Registry[TrackerInfo] = Registry("tracker")
for _info in (
    TrackerInfo(
        "file_logger",
        "training_logs.jsonl in output_dir, in fms-hf-tuning's format (on by default).",
        settings=("training_logs_filename",),
    ),
    TrackerInfo(
        "aim",
        "Aim run in a local repository (--aim_repo) or on a server (--aim_url, or "
        "--aim_remote_server_ip with --aim_remote_server_port); the run hash is exported to "
        "aim_tracker.json in --run_uri_export_path (default output_dir).",
        extra="aim",
        settings=(
            "aim_repo",
            "aim_url",
            "aim_remote_server_ip",
            "aim_remote_server_port",
            "aim_experiment",
            "run_uri_export_path",
        ),
    ),
    TrackerInfo(
        "mlflow",
        "MLflow run (--mlflow_tracking_uri, --mlflow_experiment), through transformers' "
        "MLflow integration.",
        extra="mlflow",
        report_to="mlflow",
        settings=("mlflow_tracking_uri", "mlflow_experiment"),
    ),
    TrackerInfo(
        "tensorboard",
        "TensorBoard event files under output_dir/runs (or --logging_dir).",
        extra="tensorboard",
        report_to="tensorboard",
        settings=("logging_dir",),
    ),
    TrackerInfo(
        "wandb",
        "Weights & Biases run (WANDB_MODE=offline works without network).",
        extra="wandb",
        report_to="wandb",
    ),
    TrackerInfo("none", "No tracker at all (file_logger included)."),
):
    TRACKERS.add(_info)
