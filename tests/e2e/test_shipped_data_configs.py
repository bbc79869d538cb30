"""Every shipped data config trains as shipped, from a working directory that is not the repo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CONFIGS = sorted((Path(__file__).resolve().parents[2] / "data_configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_config_trains(config, run_tuner, fast_flags, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative data paths resolve against the YAML, not the cwd
    code, out = run_tuner("--data_config", str(config), *fast_flags)
    assert code == 0
    steps = [
        json.loads(x)["data"]["step"]
        for x in (out / "training_logs.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3]


def test_mixing_config_feeds_validation_split(run_tuner, fast_flags, data_dir):
    config = data_dir.parent / "mixing_with_validation.yaml"
    code, out = run_tuner(
        "--data_config", str(config), *fast_flags, "--eval_strategy", "steps", "--eval_steps", "3"
    )
    assert code == 0
    names = [json.loads(x)["name"] for x in (out / "training_logs.jsonl").read_text().splitlines()]
    assert names.count("validation_loss") == 1


def test_dataprocessing_only_writes_processed_data_without_model(run_tuner, data_dir, tmp_path):
    config = data_dir.parent / "input_output_masking.yaml"
    code, out = run_tuner(
        "--data_config", str(config), "--do_dataprocessing_only", "--max_seq_length", "128"
    )
    assert code == 0
    from datasets import load_from_disk

    train = load_from_disk(str(out / "processed_data" / "train"))
    assert set(train.column_names) == {"input_ids", "labels"}
    assert len(train) == 300
    assert not any(p.name.startswith("checkpoint") for p in out.iterdir())
