"""FSDP2 on two CPU processes: sharded training, sharded checkpoint, resume, convert to HF.

Accelerate never runs FSDP on CPU, so the lifecycle is proven with raw torch (fully_shard on a
gloo device mesh, torch.distributed.checkpoint) in tests/e2e/fsdp2_cpu_worker.py, launched with
torchrun twice: the first launch trains an uninterrupted reference run and, on a fresh model, the
first part saved as a sharded checkpoint in accelerate's layout; the second launch is a new set
of processes that resumes from it. The checkpoint is then turned into a Hugging Face folder with
`tuning.models.sharded.dcp_to_hf`, the converter the post-training tools share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("fsdp2_cpu_worker.py")
WORLD = 2
STEPS, SPLIT = 4, 2
SHARDS = {".metadata", "__0_0.distcp", "__1_0.distcp"}


def _launch(phase: str, model_dir: Path, out: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", "--nproc_per_node", str(WORLD),  # --standalone: a free port, no races
        str(WORKER), "--phase", phase, "--model", str(model_dir), "--out", str(out),
        "--steps", str(STEPS), "--split", str(SPLIT),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{phase} launch failed:\n{result.stderr[-4000:]}"


def _reports(out: Path, phase: str) -> list[dict]:
    reports = [json.loads(p.read_text()) for p in sorted(out.glob(f"rank-{phase}-*.json"))]
    return sorted(reports, key=lambda report: report["rank"])


@pytest.fixture(scope="module")
def fsdp2_run(tiny_model_dir, tmp_path_factory) -> Path:
    """Both launches, once for the module: they dominate its time."""
    out = tmp_path_factory.mktemp("fsdp2")
    _launch("first", tiny_model_dir, out)
    _launch("resume", tiny_model_dir, out)
    return out


def test_both_launches_ran_two_ranks_on_their_own_micro_batches(fsdp2_run):
    for phase in ("first", "resume"):
        reports = _reports(fsdp2_run, phase)
        assert [(r["rank"], r["world_size"], r["env_world_size"]) for r in reports] == [
            (0, WORLD, WORLD),
            (1, WORLD, WORLD),
        ]
    first = _reports(fsdp2_run, "first")
    # Different micro-batches per rank, one global loss (the all-reduced mean) on both.
    assert first[0]["uninterrupted"]["local_losses"] != first[1]["uninterrupted"]["local_losses"]
    assert first[0]["uninterrupted"]["losses"] == first[1]["uninterrupted"]["losses"]


def test_resumed_run_reproduces_the_uninterrupted_run(fsdp2_run):
    import torch

    first = _reports(fsdp2_run, "first")[0]
    resumed = _reports(fsdp2_run, "resume")[0]
    assert resumed["scheduler_step_after_load"] == SPLIT
    reference = first["uninterrupted"]["losses"]
    stitched = first["first"]["losses"] + resumed["resumed"]["losses"]
    assert len(reference) == len(stitched) == STEPS
    assert stitched == pytest.approx(reference, abs=1e-6, rel=0)

    uninterrupted = torch.load(fsdp2_run / "full_uninterrupted.pt", weights_only=True)
    final = torch.load(fsdp2_run / "full_resumed.pt", weights_only=True)
    assert final.keys() == uninterrupted.keys()
    for key, value in final.items():
        torch.testing.assert_close(value, uninterrupted[key], rtol=0, atol=1e-6, msg=key)


def test_checkpoints_hold_shards_from_both_ranks(fsdp2_run):
    for step in (SPLIT, STEPS):
        checkpoint = fsdp2_run / f"checkpoint-{step}"
        assert {p.name for p in checkpoint.iterdir()} == {
            "pytorch_model_fsdp_0",
            "optimizer_0",
            "scheduler.pt",
        }
        for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
            assert {p.name for p in (checkpoint / folder).iterdir()} == SHARDS


def test_dcp_to_hf_gives_the_gathered_weights(fsdp2_run, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from tuning.models.sharded import dcp_to_hf

    out = dcp_to_hf(fsdp2_run / f"checkpoint-{STEPS}", tiny_model_dir, tmp_path / "hf")
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
    }
    gathered = torch.load(fsdp2_run / "full_resumed.pt", weights_only=True)
    converted = AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    assert converted.keys() == gathered.keys()
    unequal = [key for key, value in gathered.items() if not torch.equal(converted[key], value)]
    assert unequal == []
    changed = [key for key, value in gathered.items() if not torch.equal(base[key], value)]
    assert len(changed) == len(gathered)  # training moved every weight
