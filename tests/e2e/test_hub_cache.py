"""Training from a hub id offline: the tiny model in a hub-cache layout under HF_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.models.test_hub import make_hub_cache

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, model: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    command = [
        sys.executable, "-m", "tuning.sft_trainer", "--model_name_or_path", model,
        "--training_data_path", str(REPO / "data_configs" / "data" / "input_output.jsonl"),
        "--output_dir", str(tmp_path / "out"), "--torch_dtype", "float32", "--use_cpu", "true",
        "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no",
        "--max_seq_length", "128",
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_cached_hub_id_trains_offline(tmp_path, tiny_model_dir):
    make_hub_cache(tmp_path / "hf" / "hub", "acme/tiny", tiny_model_dir)
    result = _run(tmp_path, "acme/tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (tmp_path / "out" / "training_logs.jsonl").read_text().splitlines()
    assert [json.loads(line)["data"]["step"] for line in lines] == [1, 2]


def test_an_uncached_hub_id_offline_is_exit_1_before_loading(tmp_path):
    result = _run(tmp_path, "acme/missing")
    assert result.returncode == 1
    assert f"hub cache at {tmp_path / 'hf' / 'hub'}" in result.stderr
    assert not (tmp_path / "out").exists()
