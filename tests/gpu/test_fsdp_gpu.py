"""FSDP1 and FSDP2 through accelerate on a real GPU (one process is enough to run the wrapping,
the sharded save and the final gather). Skipped on machines without CUDA (tests/conftest.py).

Why: accelerate never runs FSDP on CPU, so only a GPU proves the fixtures users run work end to
end with the trainer; docs/distributed.md records where these ran.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _run(fixture: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"fixtures/{fixture}",
        "--num_processes", "1", "--main_process_port", _port(), "-m", "tuning.sft_trainer",
        "--model_name_or_path", str(REPO / "artifacts" / "tiny-llama"),
        "--training_data_path", str(REPO / "data_configs" / "data" / "input_output.jsonl"),
        "--output_dir", str(out), "--torch_dtype", "float32", "--max_steps", "3",
        "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_steps", "3",
        "--max_seq_length", "128", "--save_model_dir", str(out / "final"), *extra,
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _steps(out: Path) -> list[int]:
    lines = (out / "training_logs.jsonl").read_text().splitlines()
    return [json.loads(line)["data"]["step"] for line in lines]


def test_fsdp1_defaults_train_and_save_a_full_model(tmp_path):
    out = tmp_path / "fsdp1"
    result = _run("accelerate_fsdp_defaults.yaml", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _steps(out) == [1, 2, 3]
    assert (out / "final" / "model.safetensors").is_file()
    assert (out / "checkpoint-3" / "trainer_state.json").is_file()


def test_fsdp2_sharded_checkpoint_converts_to_the_saved_model(tmp_path):
    from safetensors.torch import load_file
    from tuning.models.sharded import dcp_to_hf

    out = tmp_path / "fsdp2"
    result = _run("accelerate_fsdp2.yaml", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _steps(out) == [1, 2, 3]
    shards = sorted((out / "checkpoint-3").glob("pytorch_model_fsdp_0/*.distcp"))
    assert shards, sorted(p.name for p in (out / "checkpoint-3").iterdir())
    converted = dcp_to_hf(
        out / "checkpoint-3" / "pytorch_model_fsdp_0",
        REPO / "artifacts" / "tiny-llama",
        tmp_path / "hf",
    )
    saved = load_file(out / "final" / "model.safetensors")
    mine = load_file(converted / "model.safetensors")
    assert saved.keys() == mine.keys()
    assert all((saved[k] == mine[k]).all() for k in saved)
