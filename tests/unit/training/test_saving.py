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


class ShardedFsdpTrainer(FakeTrainer):
    """FSDP with SHARDED_STATE_DICT: transformers' save_model would write no weights."""

    is_fsdp_enabled = True

    def __init__(self):
        super().__init__()
        from types import SimpleNamespace

        plugin = SimpleNamespace(state_dict_type="StateDictType.SHARDED_STATE_DICT")
        self.model = object()
        self.gathered_from = None
        self.args = SimpleNamespace(should_save=True)
        self.accelerator = SimpleNamespace(
            state=SimpleNamespace(fsdp_plugin=plugin),
            get_state_dict=self._gather,
            wait_for_everyone=lambda: None,
        )

    def _gather(self, model):
        self.gathered_from = model
        return {"w": 1}

    def save_model(self, path: str) -> None:
        raise AssertionError("transformers' save_model saves nothing for sharded FSDP")

    def _save(self, path: str, state_dict=None) -> None:
        from pathlib import Path

        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_text(repr(state_dict))


def test_sharded_fsdp_gathers_a_full_state_dict_for_the_final_model(tmp_path):
    trainer = ShardedFsdpTrainer()
    saved = save_final_model(trainer, str(tmp_path / "final"))
    assert trainer.gathered_from is trainer.model
    assert (saved / "model.safetensors").read_text() == "{'w': 1}"
