"""Quantized checkpoints: MXFP4 (gpt-oss) is loaded through transformers' Mxfp4Config."""

from __future__ import annotations

import json
from pathlib import Path


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
