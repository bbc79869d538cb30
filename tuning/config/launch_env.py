"""The launch environment a process was started in: what `accelerate launch` (or torchrun, or a
cluster operator) handed it through environment variables, read without importing torch.

`accelerate launch --config_file fixtures/X.yaml` turns the fixture into variables for each
child (ACCELERATE_USE_FSDP, FSDP_VERSION, FSDP_STATE_DICT_TYPE, ACCELERATE_MIXED_PRECISION,
PARALLELISM_CONFIG_*, ACCELERATE_USE_DEEPSPEED, ...), and torchrun sets WORLD_SIZE and RANK. The
plan reads them here so that what cannot work is refused before any weights load, naming the
fixture key to change.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass

_TRUE = {"1", "true", "yes"}


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in _TRUE


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(environ.get(name, default))
    except ValueError:
        return default


def gpus_visible(environ: Mapping[str, str] | None = None) -> bool:
    """Whether an NVIDIA GPU is visible to this process (decided without importing torch)."""
    environ = os.environ if environ is None else environ
    devices = environ.get("CUDA_VISIBLE_DEVICES")
    if devices is not None and devices.strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


@dataclass(frozen=True)
class LaunchEnv:
    """The distributed setup of this process, as its launcher described it."""

    world_size: int = 1
    fsdp_version: int | None = None  # None: not FSDP
    # accelerate's mixed_precision (fixture or --mixed_precision); under FSDP2 it is also the
    # FSDP mixed-precision policy (accelerate has no separate variable for that)
    mixed_precision: str = "no"
    deepspeed: bool = False
    cp_size: int = 1
    dp_shard_size: int = 1
    dp_replicate_size: int = 1
    tp_size: int = 1
    gpus: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def context_parallel(self) -> bool:
        return self.cp_size > 1


def read_launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """The launch environment of this process (the defaults when started plainly)."""
    environ = os.environ if environ is None else environ
    fsdp = _flag(environ, "ACCELERATE_USE_FSDP")
    parallelism = _flag(environ, "ACCELERATE_USE_PARALLELISM_CONFIG")
    size = (lambda name: _int(environ, f"PARALLELISM_CONFIG_{name}", 1)) if parallelism else None
    return LaunchEnv(
        world_size=_int(environ, "WORLD_SIZE", 1),
        fsdp_version=_int(environ, "FSDP_VERSION", 1) if fsdp else None,
        mixed_precision=environ.get("ACCELERATE_MIXED_PRECISION", "no").lower(),
        deepspeed=_flag(environ, "ACCELERATE_USE_DEEPSPEED"),
        cp_size=size("CP_SIZE") if size else 1,
        dp_shard_size=size("DP_SHARD_SIZE") if size else 1,
        dp_replicate_size=size("DP_REPLICATE_SIZE") if size else 1,
        tp_size=size("TP_SIZE") if size else 1,
        gpus=gpus_visible(environ),
    )
