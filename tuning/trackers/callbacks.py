"""Turn the planned trackers into what the Trainer runs: our own callbacks (file_logger, Aim)
and the environment transformers' integrations read (MLflow, TensorBoard). Main process only
reports."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuning.trackers.registry import TrackerPlan


def _aim_callback(settings: dict[str, Any], exp_metadata: Mapping[str, Any] | None) -> Any:
    from aim.hugging_face import AimCallback

    class ExportingAimCallback(AimCallback):
        """fms exports the run hash to <run_uri_export_path>/aim_tracker.json; so do we."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            super().on_train_begin(args, state, control, model=model, **kwargs)
            run = getattr(self, "_run", None)
            if run is None or not state.is_world_process_zero:
                return
            if exp_metadata:
                run["exp_metadata"] = dict(exp_metadata)
            folder = Path(settings["export_dir"])
            folder.mkdir(parents=True, exist_ok=True)
            record = {"run_hash": run.hash, "repo": settings["repo"]}
            (folder / "aim_tracker.json").write_text(json.dumps(record, sort_keys=True) + "\n")

    return ExportingAimCallback(repo=settings["repo"], experiment=settings["experiment"])


def tracker_callbacks(
    trackers: tuple[TrackerPlan, ...], output_dir: str, exp_metadata: Mapping[str, Any] | None
) -> list[Any]:
    """Callbacks for the trackers tuneforge drives itself; environment for the others."""
    from tuning.trackers.file_logger import FileLoggerCallback

    callbacks: list[Any] = []
    for tracker in trackers:
        settings = dict(tracker.settings)
        if tracker.name == "file_logger":
            path = Path(output_dir) / settings["training_logs_filename"]
            callbacks.append(FileLoggerCallback(path))
        elif tracker.name == "aim":
            callbacks.append(_aim_callback(settings, exp_metadata))
        elif tracker.name == "tensorboard" and settings.get("logging_dir"):
            os.environ["TENSORBOARD_LOGGING_DIR"] = settings["logging_dir"]
        elif tracker.name == "mlflow":
            os.environ["MLFLOW_TRACKING_URI"] = settings["mlflow_tracking_uri"]
            if settings.get("mlflow_experiment"):
                os.environ["MLFLOW_EXPERIMENT_NAME"] = settings["mlflow_experiment"]
    return callbacks
