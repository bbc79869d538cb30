"""The training stage: model, PEFT, trainer, resume, final save, run summary."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tuning.models.plan import ModelPlan
from tuning.training.plan import TrainPlan

logger = logging.getLogger(__name__)
SUMMARY_NAME = "run_summary.json"
ADDED_TOKENS_INFO = "added_tokens_info.json"


def _pack(dataset: Any, max_length: int) -> Any:
    """Best-fit-decreasing packing of tokenized rows (trl's implementation)."""
    from trl.data_utils import pack_dataset

    keep = [c for c in dataset.column_names if c not in ("input_ids", "labels")]
    return pack_dataset(dataset.remove_columns(keep), seq_length=max_length, strategy="bfd")


def train(
    plan: TrainPlan, model_plan: ModelPlan, args: Any, tokenizer: Any, data: Any, max_length: int
) -> None:
    from tuning.models.loading import load_model
    from tuning.models.peft import apply_peft, invocation_tokens
    from tuning.training.collators import check_padding_free
    from tuning.training.invocation import check_invocation
    from tuning.training.preemption import PreemptionCallback, PreemptionGuard
    from tuning.training.saving import save_final_model
    from tuning.training.trainer import build_trainer

    model, added_rows = load_model(model_plan, tokenizer)
    padding_free = plan.padding_free or plan.packing
    check_padding_free(model.config._attn_implementation, padding_free)
    model = apply_peft(model_plan, model, tokenizer)
    tokens = invocation_tokens(model_plan, tokenizer)
    if tokens and not getattr(data, "streaming", False):
        text = str(model_plan.peft_arguments["alora_invocation_string"])
        check_invocation(data.train, tokens, text, tokenizer)
    train_dataset = _pack(data.train, max_length) if plan.packing else data.train
    trainer = build_trainer(plan, args, model, tokenizer, train_dataset, data.eval, padding_free)
    if plan.resume_from:
        logger.info("Resuming from %s", plan.resume_from)
    started = time.perf_counter()
    guard = PreemptionGuard()
    preemption = PreemptionCallback(guard)
    trainer.add_callback(preemption)
    with guard:  # SIGTERM/SIGINT: finish the step, checkpoint, stop (training only)
        result = trainer.train(resume_from_checkpoint=plan.resume_from)
    elapsed = time.perf_counter() - started
    if preemption.stopped_at is not None:
        _raise_preempted(trainer, preemption.stopped_at, guard.signum)
    saved = None
    if plan.save_model_dir:
        saved = save_final_model(trainer, plan.save_model_dir)
    if trainer.is_world_process_zero():
        if saved:
            logger.info("Tuned model saved to %s", saved)
        _write_summary(plan, trainer, result, elapsed, saved)
        if model_plan.peft_method in ("lora", "alora"):
            _write_added_tokens_info(added_rows, [plan.output_dir, saved])


def _raise_preempted(trainer: Any, step: int, signum: int | None) -> None:
    """Stopped by a signal after the Trainer's checkpoint at `step`: no final model and no run
    summary (the run is not finished); exit 143 through the entry point."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from tuning.errors import Preempted
    from tuning.training.preemption import preempted_message

    checkpoint = Path(trainer.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
    raise Preempted(preempted_message(step, str(checkpoint), signum))


def _write_added_tokens_info(count: int, folders: list) -> None:
    """fms's record of embedding rows added to the base model, read when serving the adapter
    (e.g. vLLM's new_embeddings.safetensors post-processing)."""
    for folder in folders:
        if folder:
            path = Path(folder) / ADDED_TOKENS_INFO
            path.write_text(json.dumps({"num_new_tokens": count}) + "\n")


def _write_summary(plan: TrainPlan, trainer, result, elapsed, saved) -> None:
    summary = {
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "seconds": round(elapsed, 2),
        "resumed_from": plan.resume_from,
        "save_model_dir": str(saved) if saved else None,
        "experiment": plan.experiment,
        "exp_metadata": dict(plan.exp_metadata) if plan.exp_metadata else None,
        "metrics": result.metrics,
    }
    path = Path(plan.output_dir) / SUMMARY_NAME
    path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")


def save_processed_data(plan: TrainPlan, data: Any) -> None:
    """--do_dataprocessing_only: the main process writes the tokenized splits to output_dir;
    the others wait until it has."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        _write_processed_data(plan, data)
    state.wait_for_everyone()


def _write_processed_data(plan: TrainPlan, data: Any) -> None:
    out = Path(plan.output_dir)
    splits = {"train": (data.train, plan.train_shards)}
    if data.eval is not None:
        splits["validation"] = (data.eval, plan.eval_shards)
    for name, (dataset, shards) in splits.items():
        target = out / "processed_data" / name
        dataset.save_to_disk(str(target), num_shards=shards)
        logger.info("Processed %s data (%d rows) saved to %s", name, len(dataset), target)
