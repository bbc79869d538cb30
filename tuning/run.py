"""Execute a run plan: tokenizer → data → (save the resolved config) → model → train → save."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from tuning.plan import RunPlan

RESOLVED_CONFIG_NAME = "tuneforge_config.json"
logger = logging.getLogger(__name__)


def _is_main_process() -> bool:
    """Rank 0 of a distributed launch (or the only process), read from the launcher's env."""
    return os.environ.get("RANK", "0") == "0"


def _log_process() -> None:
    """Which process this is, so a multi-process run shows every rank started."""
    logger.info(
        "tuneforge process: rank %s of world size %s (local rank %s)",
        os.environ.get("RANK", "0"),
        os.environ.get("WORLD_SIZE", "1"),
        os.environ.get("LOCAL_RANK", "0"),
    )


def save_resolved_config(plan: RunPlan) -> None:
    """Record what runs (secrets redacted) next to the checkpoints; main process only."""
    if not _is_main_process():
        return
    out = Path(plan.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(plan.resolved), indent=2, sort_keys=True) + "\n"
    target = out / RESOLVED_CONFIG_NAME
    if target.is_file():
        if target.read_text(encoding="utf-8") == text:
            return  # the same job again: keep the record (and its time) as it is
        _keep_previous_config(target)
    tmp = out / f".{RESOLVED_CONFIG_NAME}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def _keep_previous_config(target: Path) -> None:
    """Move an earlier run's record aside as tuneforge_config.<its mtime, UTC>.json."""
    stamp = datetime.fromtimestamp(target.stat().st_mtime, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stem, suffix = Path(RESOLVED_CONFIG_NAME).stem, Path(RESOLVED_CONFIG_NAME).suffix
    keep = target.with_name(f"{stem}.{stamp}{suffix}")
    n = 1
    while keep.exists():  # two records within one second: number the later ones
        keep = target.with_name(f"{stem}.{stamp}-{n}{suffix}")
        n += 1
    os.replace(target, keep)


def _drop_fsdp_launch() -> None:
    """The plan chose CPU DDP for an FSDP launch on a machine without GPUs: take accelerate's
    FSDP switch out of this process's environment so the Accelerator does not build (and fail
    on) an FSDP plugin that cannot run here."""
    for name in [n for n in os.environ if n == "ACCELERATE_USE_FSDP" or n.startswith("FSDP_")]:
        del os.environ[name]


def execute(plan: RunPlan) -> None:
    """Run the plan holding output_dir's run lock (main process only), released however the
    run ends: a second run into the same output_dir is refused while this one lives."""
    from tuning.training.lock import acquire

    lock = acquire(plan.train.output_dir) if _is_main_process() else None
    try:
        _execute_stages(plan)
    finally:
        if lock is not None:
            lock.release()
        _close_process_group()


def _close_process_group() -> None:
    """Leave the process group cleanly: a gloo group torn down at interpreter exit can abort a
    rank ("terminate called without an active exception") after a successful run."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _execute_stages(plan: RunPlan) -> None:
    """Run each stage on its slice of the plan."""
    from tuning.data.pipeline import prepare_datasets
    from tuning.models.tokenizer import effective_max_length, load_tokenizer
    from tuning.training.stage import save_processed_data, train
    from tuning.training.trainer import sft_config

    _log_process()
    if plan.train.fsdp_off:
        _drop_fsdp_launch()
    tokenizer = load_tokenizer(plan.model)
    t = plan.train
    max_length = effective_max_length(t.max_seq_length, t.max_seq_length_explicit, tokenizer)
    # TrainingArguments' own checks need transformers: run them before any tokenization. They
    # also set up the process group, so the ranks of a launch agree on who prepares data first.
    args = None if t.process_data_only else sft_config(t, max_length)
    if t.process_data_only:
        from accelerate import PartialState

        PartialState(cpu=bool(t.arguments.get("use_cpu", False)))
    data = prepare_datasets(
        plan.data,
        tokenizer,
        max_length,
        streaming_ok=not t.process_data_only,
        cache_dir=t.cache_dir,
    )
    save_resolved_config(plan)
    if t.process_data_only:
        save_processed_data(t, data)
        return
    train(t, plan.model, args, tokenizer, data, max_length)
