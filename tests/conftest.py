"""Shared fixtures: the tiny offline model/tokenizer made by scripts/make_tiny_artifacts.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "artifacts" / "tiny-llama"
DATA = REPO / "data_configs" / "data"


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests on machines without CUDA."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """Path of the tiny model; built on first use if `make artifacts` has not run."""
    if not (TINY / "config.json").exists():
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "make_tiny_artifacts.py"), "--out", str(TINY)],
            check=True,
        )
    return TINY


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture()
def run_tuner(tiny_model_dir, tmp_path, monkeypatch):
    """Run tuning.sft_trainer.main in-process with the tiny model; returns (exit code, output_dir)."""
    from tuning import sft_trainer

    termination_log = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_LOG_FILE", str(termination_log))

    def run(*flags: str, output_dir: Path | None = None, model: bool = True):
        out = output_dir or tmp_path / "out"
        argv = [*flags]
        if model:
            argv = ["--model_name_or_path", str(tiny_model_dir), *argv]
        if "--output_dir" not in argv:
            argv += ["--output_dir", str(out)]
        return sft_trainer.main(argv), out

    run.termination_log = termination_log
    return run


FAST_TRAINING = (
    "--torch_dtype", "float32",
    "--use_cpu", "true",
    "--per_device_train_batch_size", "4",
    "--learning_rate", "1e-3",
    "--max_steps", "3",
    "--logging_strategy", "steps",
    "--logging_steps", "1",
    "--save_strategy", "no",
    "--max_seq_length", "128",
)  # fmt: skip


@pytest.fixture()
def fast_flags() -> list[str]:
    """Flags for a few quick CPU training steps on the tiny model."""
    return list(FAST_TRAINING)
