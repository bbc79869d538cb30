"""save_model_dir contents and atomicity, resume step numbers."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

FULL_MODEL_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}


def _train_flags(data_dir, steps: int) -> list[str]:
    return [
        "--training_data_path", str(data_dir / "input_output.jsonl"),
        "--torch_dtype", "float32", "--use_cpu", "true", "--per_device_train_batch_size", "4",
        "--max_steps", str(steps), "--save_strategy", "steps", "--save_steps", "2",
        "--logging_strategy", "steps", "--logging_steps", "1", "--max_seq_length", "128",
    ]  # fmt: skip


def _summary(out):
    return json.loads((out / "run_summary.json").read_text())


def test_save_model_dir_with_save_strategy_no(run_tuner, fast_flags, data_dir, tmp_path):
    save_dir = tmp_path / "model"
    code, out = run_tuner(
        "--training_data_path", str(data_dir / "input_output.jsonl"), *fast_flags,
        "--save_model_dir", str(save_dir),
    )  # fmt: skip
    assert code == 0
    assert {p.name for p in save_dir.iterdir()} >= FULL_MODEL_FILES
    assert not any(p.name.startswith("checkpoint-") for p in out.iterdir())
    assert not [p for p in tmp_path.iterdir() if ".staging" in p.name]


def test_save_model_dir_equal_to_output_dir_keeps_logs(run_tuner, fast_flags, data_dir, tmp_path):
    out = tmp_path / "out"
    code, _ = run_tuner(
        "--training_data_path", str(data_dir / "input_output.jsonl"), *fast_flags,
        "--save_model_dir", str(out), output_dir=out,
    )  # fmt: skip
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert names >= FULL_MODEL_FILES
    assert {"training_logs.jsonl", "tuneforge_config.json", "run_summary.json"} <= names


def test_rerun_resumes_from_newest_complete_checkpoint(run_tuner, data_dir, tmp_path):
    out = tmp_path / "out"
    code, _ = run_tuner(*_train_flags(data_dir, 2), output_dir=out)
    assert code == 0
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    (out / "checkpoint-9").mkdir()  # a checkpoint cut off mid-write: no trainer_state.json
    code, _ = run_tuner(*_train_flags(data_dir, 4), output_dir=out)
    assert code == 0
    summary = _summary(out)
    assert summary["resumed_from"] == str(out / "checkpoint-2")
    assert summary["global_step"] == 4
    steps = [
        json.loads(x)["data"]["step"]
        for x in (out / "training_logs.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]  # the resumed run logged only steps 3 and 4


def test_resume_false_starts_fresh_and_path_resumes_there(run_tuner, data_dir, tmp_path):
    out = tmp_path / "out"
    assert run_tuner(*_train_flags(data_dir, 4), output_dir=out)[0] == 0
    assert (
        run_tuner(*_train_flags(data_dir, 4), "--resume_from_checkpoint", "False", output_dir=out)[
            0
        ]
        == 0
    )
    assert _summary(out)["resumed_from"] is None
    assert _summary(out)["global_step"] == 4
    code, _ = run_tuner(
        *_train_flags(data_dir, 4), "--resume_from_checkpoint", str(out / "checkpoint-2"),
        output_dir=out,
    )  # fmt: skip
    assert code == 0
    assert _summary(out)["resumed_from"] == str(out / "checkpoint-2")
    assert _summary(out)["global_step"] == 4
