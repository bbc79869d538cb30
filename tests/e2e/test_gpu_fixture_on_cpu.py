"""A cluster command debugged unchanged on a machine without GPUs: an FSDP fixture there trains
as CPU DDP over gloo with one notice per process, never as N independent copies."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.mark.parametrize("fixture", ["accelerate_fsdp_defaults.yaml", "accelerate_fsdp2.yaml"])
def test_fsdp_fixture_without_gpus_trains_as_cpu_ddp(fixture, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"fixtures/{fixture}",
        "--num_processes", "2", "--main_process_port", _port(), "-m", "tuning.sft_trainer",
        "--model_name_or_path", str(tiny_model_dir),
        "--training_data_path", str(REPO / "data_configs" / "data" / "input_output.jsonl"),
        "--output_dir", str(out), "--torch_dtype", "float32", "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--logging_steps", "1", "--save_strategy", "no",
        "--max_seq_length", "128",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    version = "2" if "fsdp2" in fixture else "1"
    notice = (
        f"FSDP{version} needs CUDA GPUs and none are visible: these 2 processes train as CPU DDP"
    )
    assert result.stderr.count(notice) == 2  # once in each of the two processes
    assert result.stderr.count("rank 0 of world size 2") == 1
    assert result.stderr.count("rank 1 of world size 2") == 1
    lines = (out / "training_logs.jsonl").read_text().splitlines()
    assert [json.loads(line)["data"]["step"] for line in lines] == [1, 2]  # one run, not two
