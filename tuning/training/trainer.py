"""Build trl's SFTTrainer from a JobConfig and prepared (already tokenized) datasets."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from tuning.config.job import JobConfig
from tuning.config.schema import hf_training_fields
from tuning.errors import ConfigError, MissingExtraError
from tuning.trackers.file_logger import FileLoggerCallback
from tuning.training.collators import build_collator

logger = logging.getLogger(__name__)

# Trackers handled by transformers' report_to, and the package each needs.
_REPORT_TO = {"mlflow": ("mlflow", "mlflow"), "tensorboard": ("tensorboard", "tensorboard")}
_KNOWN_TRACKERS = {"file_logger", "aim", "none", *_REPORT_TO}


def _trl_default_overrides() -> dict[str, Any]:
    """SFTConfig changes some TrainingArguments defaults (lr, logging_steps...); fms keeps HF's."""
    from trl import SFTConfig

    snapshot = hf_training_fields()
    overrides = {}
    for field in dataclasses.fields(SFTConfig):
        if field.name not in snapshot:
            continue
        default = field.default
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        wanted = snapshot[field.name]["default"]
        if default != wanted and not isinstance(default, (dict, list)):
            overrides[field.name] = wanted
    return overrides


def report_to(trackers: list[str]) -> list[str]:
    """Map --trackers to transformers integrations, checking the optional packages exist."""
    unknown = [t for t in trackers if t.lower() not in _KNOWN_TRACKERS]
    if unknown:
        available = ", ".join(sorted(_KNOWN_TRACKERS))
        raise ConfigError(f"--trackers {unknown}: unknown tracker. Available: {available}.")
    names = []
    for tracker in (t.lower() for t in trackers):
        if tracker in _REPORT_TO:
            extra, package = _REPORT_TO[tracker]
            if importlib.util.find_spec(package) is None:
                raise MissingExtraError(f"--trackers {tracker}", extra, package)
            names.append(tracker)
        if tracker == "aim" and importlib.util.find_spec("aim") is None:
            raise MissingExtraError("--trackers aim", "aim", "aim")
    return names or ["none"]


def sft_config(job: JobConfig, max_length: int) -> Any:
    """SFTConfig from the job: fms defaults, pass-through TrainingArguments, our data handling."""
    from trl import SFTConfig

    kwargs: dict[str, Any] = _trl_default_overrides()
    kwargs.update(job.hf_training)
    # Trainer pickles its arguments into every checkpoint (training_args.bin): hand the hub
    # token to huggingface_hub through the environment instead, so it is never written to disk.
    token = kwargs.pop("hub_token", None)
    if token:
        os.environ.setdefault("HF_TOKEN", token)
    if job.training.warmup_ratio is not None:
        kwargs["warmup_steps"] = job.training.warmup_ratio
    kwargs.update(
        output_dir=job.training.output_dir,
        save_strategy=job.training.save_strategy,
        logging_strategy=job.training.logging_strategy,
        report_to=report_to(job.tracking.trackers),
        max_length=max_length,
        # Data arrives tokenized with exact labels; trl must not re-tokenize, pack or drop columns.
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        packing=False,
        padding_free=False,
    )
    if job.tracking.experiment and "run_name" not in kwargs:
        kwargs["run_name"] = job.tracking.experiment
    try:
        return SFTConfig(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"Training arguments rejected: {exc}") from exc


def _loss_sum_trainer(base: type) -> type:
    """Subclass that sums the loss over tokens (--enable_reduce_loss_sum)."""

    class SumLossTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            # The model divides the token-summed loss by num_items_in_batch: 1 keeps the sum.
            one = torch.tensor(1, device=inputs["input_ids"].device)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch=one)

    return SumLossTrainer


def build_trainer(
    job: JobConfig,
    model: Any,
    tokenizer: Any,
    train_dataset: Any,
    eval_dataset: Any | None,
    max_length: int,
    padding_free: bool,
) -> Any:
    from trl import SFTTrainer

    args = sft_config(job, max_length)
    trainer_class = (
        _loss_sum_trainer(SFTTrainer) if job.training.enable_reduce_loss_sum else SFTTrainer
    )
    callbacks = []
    if "file_logger" in [t.lower() for t in job.tracking.trackers]:
        path = Path(job.training.output_dir) / job.tracking.training_logs_filename
        callbacks.append(FileLoggerCallback(path))
    if "aim" in [t.lower() for t in job.tracking.trackers]:
        from aim.hugging_face import AimCallback

        callbacks.append(
            AimCallback(repo=job.tracking.aim_repo, experiment=job.tracking.aim_experiment)
        )
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=build_collator(
            tokenizer, padding_free=padding_free, pad_to_multiple_of=job.training.pad_to_multiple_of
        ),
        callbacks=callbacks,
    )
    return trainer
