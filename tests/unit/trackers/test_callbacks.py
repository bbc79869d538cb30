"""Planned trackers become callbacks or the environment transformers' integrations read."""

from __future__ import annotations

from tuning.trackers.callbacks import tracker_callbacks
from tuning.trackers.file_logger import FileLoggerCallback
from tuning.trackers.registry import TRACKERS, TrackerPlan


def test_file_logger_writes_in_output_dir(tmp_path):
    (callback,) = tracker_callbacks(
        (TrackerPlan("file_logger", None, {"training_logs_filename": "logs.jsonl"}),),
        str(tmp_path),
        None,
    )
    assert isinstance(callback, FileLoggerCallback)
    assert callback.path == tmp_path / "logs.jsonl"


def test_mlflow_and_tensorboard_settings_reach_their_integrations(tmp_path, monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "TENSORBOARD_LOGGING_DIR"):
        monkeypatch.delenv(name, raising=False)
    trackers = (
        TrackerPlan(
            "mlflow", "mlflow", {"mlflow_tracking_uri": "file:///m", "mlflow_experiment": "e"}
        ),
        TrackerPlan("tensorboard", "tensorboard", {"logging_dir": str(tmp_path / "tb")}),
    )
    assert tracker_callbacks(trackers, str(tmp_path), None) == []
    import os

    assert os.environ["MLFLOW_TRACKING_URI"] == "file:///m"
    assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "e"
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tb")


def test_every_tracker_setting_is_a_flag():
    from tuning.config.schema import all_flags

    flags = all_flags()
    for info in TRACKERS.entries().values():
        assert all(flag in flags for flag in info.settings), info.name
