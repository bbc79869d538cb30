"""--packing (BFD) and --padding_free train end to end; incompatible combinations stop early."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def _logged_steps(out) -> list[int]:
    lines = (out / "training_logs.jsonl").read_text().splitlines()
    return [json.loads(line)["data"]["step"] for line in lines]


@pytest.mark.parametrize(
    "flags",
    [["--packing"], ["--padding_free", "huggingface"], ["--padding_free", "true"]],
    ids=["packing", "padding-free-fms", "padding-free-bool"],
)
def test_packed_and_padding_free_runs_train(run_tuner, fast_flags, data_dir, flags, tmp_path):
    save = tmp_path / "model"
    code, out = run_tuner(
        "--data_config", str(data_dir.parent / "chat_assistant_only.yaml"),
        *fast_flags, *flags, "--save_model_dir", str(save),
    )  # fmt: skip
    assert code == 0
    assert _logged_steps(out) == [1, 2, 3]
    assert (save / "model.safetensors").is_file()
    saved = json.loads((out / "tuneforge_config.json").read_text())
    assert saved["packing"] == (flags == ["--packing"])


def test_packing_with_streaming_is_refused_before_loading(run_tuner, data_dir, capsys):
    code, _ = run_tuner(
        "--data_config", str(data_dir.parent / "streaming.yaml"), "--packing", "--max_steps", "2"
    )
    assert code == 1
    assert "cannot pack a stream" in capsys.readouterr().err


def test_streaming_without_max_steps_is_refused(run_tuner, data_dir, capsys):
    code, _ = run_tuner("--data_config", str(data_dir.parent / "streaming.yaml"))
    assert code == 1
    assert "set --max_steps" in capsys.readouterr().err


def test_packing_and_padding_free_together_is_refused(run_tuner, data_dir, capsys):
    code, _ = run_tuner(
        "--training_data_path", str(data_dir / "input_output.jsonl"),
        "--packing", "--padding_free", "huggingface",
    )  # fmt: skip
    assert code == 1
    assert "--packing already packs" in capsys.readouterr().err
