"""MXFP4 gpt-oss on CPU, on the tiny checkpoint scripts/make_tiny_artifacts.py stores exactly as
openai/gpt-oss-* are stored (experts as `*_blocks` + `*_scales`).

Why: fms's gpt-oss recipe tunes an MXFP4 checkpoint with `--quantization_method mxfp4
--dequantize true`. The weights must come out of transformers' dequantizer exactly as the
format defines them, LoRA must train on top, and fms's whole documented command must run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "make_tiny_artifacts.py"
GPT_OSS = REPO / "artifacts" / "tiny-gpt-oss"
REFERENCE = REPO / "artifacts" / "tiny-gpt-oss-reference.safetensors"
THINKING = REPO / "data_configs" / "gpt_oss_thinking.yaml"
EXPERT_WEIGHTS = [
    f"model.layers.{layer}.mlp.experts.{proj}"
    for layer in range(2)
    for proj in ("gate_up_proj", "down_proj")
]


@pytest.fixture(scope="module")
def gpt_oss_dir() -> Path:
    """artifacts/tiny-gpt-oss, built on first use if `make artifacts` has not run (staged next to
    it and renamed into place, so a concurrent run never sees half a folder)."""
    if (GPT_OSS / "config.json").is_file() and REFERENCE.is_file():
        return GPT_OSS
    GPT_OSS.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-gpt-oss-", dir=GPT_OSS.parent))
    try:
        built = staging / GPT_OSS.name
        llama = staging / "llama"  # the script always builds it; thrown away here
        command = [sys.executable, str(SCRIPT), "--out", str(llama), "--gpt-oss-out", str(built)]
        subprocess.run(command, check=True)
        os.replace(staging / REFERENCE.name, REFERENCE)
        if not GPT_OSS.exists():
            os.rename(built, GPT_OSS)  # identical bytes if another run got there first
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return GPT_OSS


def _e2m1(code: int) -> float:
    """FP4 E2M1 from its bits: sign, two exponent bits (bias 1), one mantissa bit."""
    sign = -1.0 if code & 0b1000 else 1.0
    exponent, mantissa = (code >> 1) & 0b11, code & 0b1
    if exponent == 0:
        return sign * 0.5 * mantissa
    return sign * 2.0 ** (exponent - 1) * (1 + 0.5 * mantissa)


def _decode(blocks, scales):
    """Stored [E, out, in/32, 16] blocks + [E, out, in/32] E8M0 scales -> the model's [E, in, out]
    weight (low nibble = even index), as float64 numpy."""
    import numpy as np

    blocks, scales = blocks.numpy(), scales.numpy()
    table = np.array([_e2m1(code) for code in range(16)])
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    values = table[codes] * np.exp2(scales.astype(np.float64) - 127)[..., None]
    return values.reshape(*blocks.shape[:-2], -1).transpose(0, 2, 1)


def _load_through_the_plan(model_dir: Path, output_dir: Path, *flags: str):
    """The model as a run loads it: flags -> plan -> tuning.models.loading.load_model."""
    from transformers import AutoTokenizer

    from tuning.models.loading import load_model
    from tuning.plan import build_plan
    from tuning.sft_trainer import load_job

    argv = ["--model_name_or_path", str(model_dir), "--data_config", str(THINKING), *flags]
    argv += ["--output_dir", str(output_dir)]
    plan = build_plan(load_job(argv))
    model, added_rows = load_model(plan.model, AutoTokenizer.from_pretrained(str(model_dir)))
    assert added_rows == 0  # the tokenizer and the checkpoint agree
    return model


def test_dequantized_experts_are_exactly_the_mxfp4_values(gpt_oss_dir, tmp_path):
    import numpy as np
    import torch
    from safetensors.torch import load_file

    script = _script()
    model = _load_through_the_plan(
        gpt_oss_dir,
        tmp_path / "out",
        *("--quantization_method", "mxfp4", "--dequantize", "true", "--torch_dtype", "float32"),
        # GptOss has no sdpa in transformers 5.24; eager is what it supports on CPU
        *("--flash_attn_implementation", "eager"),
    )
    assert getattr(model.config, "quantization_config", None) is None  # plain weights now
    assert not getattr(model, "is_quantized", False)
    assert type(model.model.layers[0].mlp.experts).__name__ == "GptOssExperts"

    stored = load_file(str(gpt_oss_dir / "model.safetensors"))
    reference = load_file(str(REFERENCE))
    loaded = dict(model.named_parameters())
    for name in EXPERT_WEIGHTS:
        weight = loaded[name]
        assert weight.dtype == torch.float32 and weight.requires_grad
        decoded = _decode(stored[f"{name}_blocks"], stored[f"{name}_scales"])
        # (1) transformers' dequantizer == an independent decoder of the stored bytes
        assert np.array_equal(weight.detach().numpy().astype(np.float64), decoded), name
        # (2) == dequant(quant(reference)): the stored values are the reference on the FP4 grid
        blocks, scales = script.quantize_mxfp4(reference[name].transpose(1, 2).numpy())
        assert np.array_equal(_decode(torch.from_numpy(blocks), torch.from_numpy(scales)), decoded)
        # (3) within MXFP4 precision of the reference: at most half the widest grid step (2) of
        # its block's power-of-two scale, i.e. one scale unit
        scale = np.exp2(scales.astype(np.float64) - 127).repeat(32, axis=-1).transpose(0, 2, 1)
        error = np.abs(reference[name].numpy().astype(np.float64) - decoded)
        assert (error <= scale).all() and error.max() > 0, name
    # biases and the unquantized rest load as plain tensors (bf16 in the file, float32 here)
    for name, tensor in stored.items():
        if not name.endswith(("_blocks", "_scales")):
            assert torch.equal(loaded[name].detach(), tensor.to(torch.float32)), name


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tiny_artifacts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _steps(out: Path) -> list[int]:
    lines = (out / "training_logs.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(r["name"] == "training_loss" and r["data"]["value"] > 0 for r in records)
    return [r["data"]["step"] for r in records]


def test_lora_trains_on_the_dequantized_model(run_tuner, gpt_oss_dir, tmp_path):
    from safetensors.torch import load_file

    save = tmp_path / "adapter"
    code, out = run_tuner(
        "--model_name_or_path", str(gpt_oss_dir), "--data_config", str(THINKING),
        "--quantization_method", "mxfp4", "--dequantize", "true",
        "--peft_method", "lora", "--target_modules", "all-linear",
        "--torch_dtype", "float32", "--max_steps", "3", "--use_cpu", "true",
        "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
        "--logging_steps", "1", "--save_strategy", "no", "--max_seq_length", "256",
        # GptOss has no sdpa in transformers 5.24 (the fallback chain's end); eager runs on CPU
        "--flash_attn_implementation", "eager",
        "--save_model_dir", str(save),
        model=False,
    )  # fmt: skip
    assert code == 0
    assert _steps(out) == [1, 2, 3]
    config = json.loads((save / "adapter_config.json").read_text())
    # all-linear: the attention projections (the experts are 3-D parameters, the router is not
    # an nn.Linear, lm_head is left out)
    targets = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj"}
    weights = load_file(str(save / "adapter_model.safetensors"))
    lora_b = {name: t for name, t in weights.items() if "lora_B" in name}
    assert len(lora_b) == 2 * 4  # 2 layers x 4 projections
    assert all(t.abs().sum() > 0 for t in lora_b.values())  # B starts at zero: it trained
    assert not any("experts" in name for name in weights)


def test_fms_documented_gpt_oss_command_runs(run_tuner, gpt_oss_dir, tmp_path, caplog):
    """fms's gpt-oss recipe flag for flag (tracker aim left out: not installed here), with
    --max_steps 2 and --use_cpu to keep it short; the model and data are the tiny stand-ins."""
    caplog.set_level(logging.WARNING, logger="tuning")
    code, out = run_tuner(
        "--model_name_or_path", str(gpt_oss_dir), "--data_config", str(THINKING),
        "--peft_method", "lora", "--r", "8", "--lora_alpha", "16", "--lora_dropout", "0",
        "--target_modules", "all-linear",
        "--learning_rate", "2e-4",
        "--lr_scheduler_type", "cosine_with_min_lr",
        "--lr_scheduler_kwargs", '{"min_lr_rate": 0.1}',
        "--warmup_ratio", "0.03",
        "--max_seq_length", "4096",
        "--gradient_checkpointing", "true",
        "--quantization_method", "mxfp4", "--dequantize", "true",
        "--use_flash_attn", "true",
        "--flash_attn_implementation", "kernels-community/vllm-flash-attn3",
        "--logging_steps", "1",
        "--per_device_train_batch_size", "1",
        "--num_train_epochs", "1", "--max_steps", "2",
        "--use_cpu", "true",
        model=False,
    )  # fmt: skip
    notices = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Attention:")]
    assert len(notices) == 1 and "kernels-community/vllm-flash-attn3 was asked" in notices[0]
    assert code == 0
    assert _steps(out) == [1, 2]


def test_dequantize_false_stops_at_the_plan(run_tuner, gpt_oss_dir, tmp_path):
    code, out = run_tuner(
        "--model_name_or_path", str(gpt_oss_dir), "--data_config", str(THINKING),
        "--quantization_method", "mxfp4", "--dequantize", "false",
        model=False,
    )  # fmt: skip
    assert code == 1
    message = run_tuner.termination_log.read_text()
    assert "--dequantize false keeps the MXFP4 experts quantized" in message
    assert "Use --dequantize true" in message
    assert not out.exists()  # nothing tokenized, loaded or written
