"""The training stage: model, trainer, resume, final save, run summary."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tuning.config.job import JobConfig
from tuning.errors import ConfigError

logger = logging.getLogger(__name__)
SUMMARY_NAME = "run_summary.json"


def _pack(dataset: Any, max_length: int) -> Any:
    """Best-fit-decreasing packing of tokenized rows (trl's implementation)."""
    from trl.data_utils import pack_dataset

    keep = [c for c in dataset.column_names if c not in ("input_ids", "labels")]
    return pack_dataset(dataset.remove_columns(keep), seq_length=max_length, strategy="bfd")


def _check_steps(job: JobConfig, data: Any) -> None:
    if getattr(data, "streaming", False) and int(job.hf_training.get("max_steps", -1)) <= 0:
        raise ConfigError("Streaming data has no known length: set --max_steps.")


def train(job: JobConfig, tokenizer: Any, data: Any, max_length: int) -> None:
    from tuning.models.loading import apply_peft, load_model
    from tuning.training.collators import check_padding_free
    from tuning.training.resume import resolve_resume
    from tuning.training.saving import save_final_model
    from tuning.training.trainer import build_trainer

    _check_steps(job, data)
    resume = resolve_resume(job.training.output_dir, job.training.resume_from_checkpoint)
    model = load_model(job, tokenizer)
    padding_free = job.padding_free or job.training.packing
    check_padding_free(model.config._attn_implementation, padding_free)
    model = apply_peft(job, model)
    train_dataset = _pack(data.train, max_length) if job.training.packing else data.train
    trainer = build_trainer(
        job, model, tokenizer, train_dataset, data.eval, max_length, padding_free
    )
    if resume:
        logger.info("Resuming from %s", resume)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    elapsed = time.perf_counter() - started
    saved = None
    if job.training.save_model_dir:
        saved = save_final_model(trainer, job.training.save_model_dir)
        logger.info("Tuned model saved to %s", saved)
    if trainer.is_world_process_zero():
        _write_summary(job, trainer, result, elapsed, resume, saved)


def _write_summary(job, trainer, result, elapsed, resume, saved) -> None:
    summary = {
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "seconds": round(elapsed, 2),
        "resumed_from": resume,
        "save_model_dir": str(saved) if saved else None,
        "metrics": result.metrics,
    }
    path = Path(job.training.output_dir) / SUMMARY_NAME
    path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")


def save_processed_data(job: JobConfig, data: Any) -> None:
    """--do_dataprocessing_only: write the tokenized splits to output_dir and stop."""
    out = Path(job.training.output_dir)
    splits = {"train": (data.train, job.data.num_train_dataset_shards)}
    if data.eval is not None:
        splits["validation"] = (data.eval, job.data.num_eval_dataset_shards)
    for name, (dataset, shards) in splits.items():
        if getattr(data, "streaming", False):
            raise ConfigError(
                "--do_dataprocessing_only cannot save streaming data; drop streaming."
            )
        target = out / "processed_data" / name
        dataset.save_to_disk(str(target), num_shards=shards)
        logger.info("Processed %s data (%d rows) saved to %s", name, len(dataset), target)
