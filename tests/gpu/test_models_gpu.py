"""The attention kernels and MXFP4 path on a real GPU: flash_attention_2 and the FA3 hub kernel
where they load, and the tiny gpt-oss LoRA run. Skipped without CUDA (tests/conftest.py);
docs/models.md records where these ran."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
FAST = [
    "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no",
    "--per_device_train_batch_size", "2", "--max_seq_length", "256",
]  # fmt: skip


def _steps(out: Path) -> list[int]:
    lines = (out / "training_logs.jsonl").read_text().splitlines()
    return [json.loads(line)["data"]["step"] for line in lines]


@pytest.mark.parametrize(
    ("implementation", "package"),
    [("flash_attention_2", "flash_attn"), ("kernels-community/vllm-flash-attn3", "kernels")],
)
def test_flash_kernels_train_without_falling_back(run_tuner, implementation, package, caplog):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    with caplog.at_level(logging.WARNING):
        code, out = run_tuner(
            "--training_data_path", str(REPO / "data_configs" / "data" / "chat.jsonl"),
            "--flash_attn_implementation", implementation, "--torch_dtype", "bfloat16", *FAST,
        )  # fmt: skip
    assert code == 0
    assert "Attention:" not in caplog.text  # what was asked is what ran
    assert _steps(out) == [1, 2]


def test_tiny_gpt_oss_mxfp4_lora_on_gpu(run_tuner):
    model = REPO / "artifacts" / "tiny-gpt-oss"
    code, out = run_tuner(
        "--model_name_or_path", str(model),
        "--data_config", str(REPO / "data_configs" / "gpt_oss_thinking.yaml"),
        "--quantization_method", "mxfp4", "--dequantize", "true",
        "--peft_method", "lora", "--target_modules", "all-linear", "--lora_dropout", "0",
        "--torch_dtype", "bfloat16", *FAST,
        model=False,
    )  # fmt: skip
    assert code == 0
    assert _steps(out) == [1, 2]
