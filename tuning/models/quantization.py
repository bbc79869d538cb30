"""Quantized checkpoints: MXFP4 (gpt-oss) is loaded through transformers' Mxfp4Config.

Plan-time rules, decided without importing torch or transformers:
- `--quantization_method mxfp4` needs a checkpoint stored in MXFP4 (`mxfp4_problem`);
- `--dequantize false` keeps the experts in MXFP4 (`native_mxfp4_problem`). That needs a
  transformers whose MXFP4 quantizer is trainable (5.24's is not: `Mxfp4HfQuantizer.is_trainable`
  is False, so its Trainer refuses the model, LoRA included; read from the installed source) and
  NVIDIA GPUs of compute capability 9.0 or newer (Hopper or later), read with `nvidia-smi`.
  Anywhere else the run must dequantize.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tuning.config.launch_env import gpus_visible

NATIVE_MXFP4_CAPABILITY = (9, 0)  # Hopper
_QUERY = ["nvidia-smi", "--query-gpu=index,uuid,compute_cap", "--format=csv,noheader"]


def mxfp4_problem(path: str) -> str | None:
    """--quantization_method mxfp4 only makes sense for a checkpoint stored in MXFP4."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None  # a hub id: transformers checks it while loading
    method = (json.loads(config.read_text()).get("quantization_config") or {}).get("quant_method")
    if method == "mxfp4":
        return None
    return (
        f"--quantization_method mxfp4: the checkpoint {path} is not stored in MXFP4 "
        f"({config} has quant_method {method!r}). Drop the flag for an unquantized model."
    )


def _visible(rows: list[tuple[str, str, str]], devices: str | None) -> list[tuple[str, str, str]]:
    """The nvidia-smi rows CUDA_VISIBLE_DEVICES leaves visible (by index or UUID prefix)."""
    if devices is None:
        return rows
    wanted = [d.strip() for d in devices.split(",") if d.strip()]
    if all(d.isdigit() for d in wanted):
        return [row for row in rows if row[0] in wanted]
    if all(d.startswith("GPU-") for d in wanted):
        return [row for row in rows if any(row[1].startswith(d) for d in wanted)]
    return rows  # MIG or other forms: every GPU of the machine


def gpu_compute_capabilities(
    environ: Mapping[str, str] | None = None,
) -> list[tuple[int, int]] | None:
    """The compute capability of each NVIDIA GPU this process may use, read with nvidia-smi:
    [] when none is visible, None when it cannot be told (nvidia-smi missing or failing)."""
    environ = os.environ if environ is None else environ
    if not gpus_visible(environ):
        return []
    if shutil.which(_QUERY[0]) is None:
        return None
    try:
        result = subprocess.run(_QUERY, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    rows = []
    for line in result.stdout.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 3:
            rows.append((fields[0], fields[1], fields[2]))
    capabilities = []
    for _, _, cap in _visible(rows, environ.get("CUDA_VISIBLE_DEVICES")):
        major, _, minor = cap.partition(".")
        if not (major.isdigit() and minor.isdigit()):
            return None  # e.g. "[N/A]"
        capabilities.append((int(major), int(minor)))
    return capabilities or None


def _returns_only_false(function: ast.FunctionDef) -> bool:
    returns = [node for node in ast.walk(function) if isinstance(node, ast.Return)]
    return bool(returns) and all(
        isinstance(r.value, ast.Constant) and r.value.value is False for r in returns
    )


def transformers_trains_mxfp4() -> bool:
    """Whether the installed transformers can train a model whose experts stay in MXFP4: its
    `Mxfp4HfQuantizer.is_trainable`, read from the source (True when it cannot be read, so an
    unexpected layout never blocks a run; transformers then decides)."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return True
    source = Path(next(iter(spec.submodule_search_locations))) / "quantizers/quantizer_mxfp4.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return True
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Mxfp4HfQuantizer":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "is_trainable":
                    return not _returns_only_false(item)
    return True


def native_mxfp4_problem(dequantize: bool) -> str | None:
    """--dequantize false (MXFP4 experts kept quantized): only where transformers can train
    them, on Hopper or newer GPUs."""
    if dequantize:
        return None
    if not transformers_trains_mxfp4():
        return (
            "--dequantize false keeps the MXFP4 experts quantized, but the installed "
            "transformers cannot train an MXFP4 model (Mxfp4HfQuantizer.is_trainable is False: "
            "its Trainer refuses it, LoRA included). Use --dequantize true (the default) to "
            "train on dequantized weights."
        )
    needed = ".".join(map(str, NATIVE_MXFP4_CAPABILITY))
    capabilities = gpu_compute_capabilities()
    if capabilities and min(capabilities) >= NATIVE_MXFP4_CAPABILITY:
        return None
    if capabilities == []:
        found = "no NVIDIA GPU is visible here"
    elif capabilities is None:
        found = "the GPUs' compute capability could not be read (nvidia-smi is missing or failed)"
    else:
        listed = ", ".join(f"{major}.{minor}" for major, minor in capabilities)
        found = f"the visible GPUs have compute capability {listed}"
    return (
        f"--dequantize false keeps the MXFP4 experts quantized, which needs NVIDIA GPUs of "
        f"compute capability {needed} or newer (Hopper or later), but {found}. Use "
        "--dequantize true (the default) to train on dequantized weights."
    )
