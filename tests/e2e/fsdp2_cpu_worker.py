"""One rank of the FSDP2-on-CPU test (tests/e2e/test_fsdp2_cpu.py), launched by torchrun.

Accelerate never runs FSDP on CPU, so this drives raw torch: `fully_shard` on each decoder layer
and the root over a gloo device mesh, AdamW with a linear-decay schedule, and sharded
torch.distributed.checkpoint (DCP) saves in the layout the Trainer writes through accelerate:

    checkpoint-N/pytorch_model_fsdp_0/  dcp.save({"model": model_state})      (save_fsdp_model)
    checkpoint-N/optimizer_0/           dcp.save({"optimizer": optim_state})  (save_fsdp_optimizer)
    checkpoint-N/scheduler.pt           torch.save by rank 0                  (Trainer)

--phase first   trains an uninterrupted run of --steps steps (the reference), then a fresh model
                for --split steps, saved as checkpoint-<split>.
--phase resume  a fresh process loads checkpoint-<split>, trains the remaining steps, saves
                checkpoint-<steps> and gathers the full state dict for the test to compare.

Every rank writes rank-<phase>-<rank>.json (rank, world size, losses) into --out; rank 0 also
writes the gathered full state dicts as torch.save files.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

MODEL_DIR = "pytorch_model_fsdp_0"
OPTIMIZER_DIR = "optimizer_0"
SCHEDULER_FILE = "scheduler.pt"
BATCH, SEQ = 2, 16


def batch(step: int, rank: int, vocab: int) -> torch.Tensor:
    """Fixed tokens for (step, rank): each rank its own micro-batch, the same in every launch."""
    generator = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randint(4, vocab, (BATCH, SEQ), generator=generator)


def build(model_dir: str, total_steps: int, mesh):
    """The tiny model sharded layer by layer, its optimizer and schedule."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 - step / (total_steps + 1)
    )
    return model, optimizer, scheduler


def train(model, optimizer, scheduler, steps: range, rank: int, world: int) -> dict:
    """Train over `steps`; the global loss is the mean of the ranks' micro-batch losses."""
    vocab = model.config.vocab_size
    global_losses, local_losses = [], []
    for step in steps:
        ids = batch(step, rank, vocab)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        reduced = loss.detach().clone()
        dist.all_reduce(reduced)  # gloo has no AVG: sum, then divide
        global_losses.append(reduced.item() / world)
        local_losses.append(loss.item())
    return {"losses": global_losses, "local_losses": local_losses}


def save(checkpoint: Path, model, optimizer, scheduler, rank: int) -> None:
    """Sharded save: every rank writes its own __<rank>_0.distcp files."""
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state}, storage_writer=dcp.FileSystemWriter(checkpoint / MODEL_DIR))
    dcp.save(
        {"optimizer": optim_state},
        storage_writer=dcp.FileSystemWriter(checkpoint / OPTIMIZER_DIR),
    )
    if rank == 0:
        torch.save(scheduler.state_dict(), checkpoint / SCHEDULER_FILE)
    dist.barrier()


def load(checkpoint: Path, model, optimizer, scheduler) -> None:
    """accelerate's load_fsdp_model / load_fsdp_optimizer, then the schedule."""
    model_state, optim_state = get_state_dict(model, optimizer)
    wrapped_model, wrapped_optim = {"model": model_state}, {"optimizer": optim_state}
    dcp.load(wrapped_model, storage_reader=dcp.FileSystemReader(checkpoint / MODEL_DIR))
    dcp.load(wrapped_optim, storage_reader=dcp.FileSystemReader(checkpoint / OPTIMIZER_DIR))
    set_state_dict(
        model,
        optimizer,
        model_state_dict=wrapped_model["model"],
        optim_state_dict=wrapped_optim["optimizer"],
    )
    scheduler.load_state_dict(torch.load(checkpoint / SCHEDULER_FILE, weights_only=True))


def gather_full(model, path: Path, rank: int) -> None:
    """The full (unsharded) weights, on rank 0 only, as the test's reference."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    if rank == 0:
        torch.save(full, path)
    dist.barrier()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", choices=("first", "resume"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--split", type=int, required=True)
    args = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    report: dict = {"rank": rank, "world_size": world, "phase": args.phase}

    if args.phase == "first":
        model, optimizer, scheduler = build(args.model, args.steps, mesh)
        report["uninterrupted"] = train(model, optimizer, scheduler, range(args.steps), rank, world)
        gather_full(model, args.out / "full_uninterrupted.pt", rank)

        model, optimizer, scheduler = build(args.model, args.steps, mesh)
        report["first"] = train(model, optimizer, scheduler, range(args.split), rank, world)
        save(args.out / f"checkpoint-{args.split}", model, optimizer, scheduler, rank)
    else:
        model, optimizer, scheduler = build(args.model, args.steps, mesh)
        load(args.out / f"checkpoint-{args.split}", model, optimizer, scheduler)
        report["scheduler_step_after_load"] = scheduler.last_epoch
        steps = range(args.split, args.steps)
        report["resumed"] = train(model, optimizer, scheduler, steps, rank, world)
        save(args.out / f"checkpoint-{args.steps}", model, optimizer, scheduler, rank)
        gather_full(model, args.out / "full_resumed.pt", rank)

    report["env_world_size"] = int(os.environ["WORLD_SIZE"])
    name = f"rank-{args.phase}-{rank}.json"
    (args.out / name).write_text(json.dumps(report), encoding="utf-8")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
