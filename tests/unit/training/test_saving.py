"""The final save appears whole or not at all, and never destroys a run's state."""

from __future__ import annotations

import pytest

from tuning.training.saving import save_final_model


class FakeTrainer:
    def __init__(self, fail_after: int | None = None):
        self.fail_after = fail_after

    def is_world_process_zero(self) -> bool:
        return True

    def save_model(self, path: str) -> None:
        from pathlib import Path

        folder = Path(path)
        folder.mkdir(parents=True)
        for index, name in enumerate(["config.json", "model.safetensors", "tokenizer.json"]):
            if self.fail_after is not None and index == self.fail_after:
                raise OSError("disk full")
            (folder / name).write_text(f"new {name}")


def test_failed_save_leaves_previous_model_untouched_and_no_debris(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("old")
    with pytest.raises(OSError, match="disk full"):
        save_final_model(FakeTrainer(fail_after=2), str(target))
    assert [p.name for p in target.iterdir()] == ["config.json"]
    assert (target / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_successful_save_replaces_the_whole_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_text("from an older run")
    save_final_model(FakeTrainer(), str(target))
    assert sorted(p.name for p in target.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_saving_into_output_dir_keeps_checkpoints_and_logs(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "training_logs.jsonl").write_text("{}\n")
    save_final_model(FakeTrainer(), str(out))
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "checkpoint-2",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "training_logs.jsonl",
    ]
