"""Build trl's SFTTrainer from the training plan and prepared (already tokenized) datasets."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from tuning.config.schema import hf_training_fields
from tuning.errors import ConfigError
from tuning.trackers.callbacks import tracker_callbacks
from tuning.training.collators import build_collator
from tuning.training.plan import TrainPlan

logger = logging.getLogger(__name__)


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


def sft_config(plan: TrainPlan, max_length: int) -> Any:
    """SFTConfig from the plan: fms defaults, TrainingArguments values, our data handling."""
    from trl import SFTConfig

    kwargs: dict[str, Any] = _trl_default_overrides()
    kwargs.update(plan.arguments)
    # Trainer pickles its arguments into every checkpoint (training_args.bin): hand the hub
    # token to huggingface_hub through the environment instead, so it is never written to disk.
    token = kwargs.pop("hub_token", None)
    if token:
        os.environ.setdefault("HF_TOKEN", token)
    kwargs.update(
        output_dir=plan.output_dir,
        max_length=max_length,
        # Data arrives tokenized with exact labels; trl must not re-tokenize, pack or drop columns.
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        packing=False,
        padding_free=False,
    )
    try:
        return SFTConfig(**kwargs)
    except (ValueError, TypeError) as exc:  # TypeError: a JSON mapping with a wrong key
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
    plan: TrainPlan,
    args: Any,
    model: Any,
    tokenizer: Any,
    train_dataset: Any,
    eval_dataset: Any | None,
    padding_free: bool,
) -> Any:
    """The trainer, with `args` from sft_config (built before the data, so bad values stop it)."""
    from trl import SFTTrainer

    trainer_class = _loss_sum_trainer(SFTTrainer) if plan.enable_reduce_loss_sum else SFTTrainer
    callbacks = tracker_callbacks(plan.trackers, plan.output_dir, plan.exp_metadata)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=build_collator(
            tokenizer, padding_free=padding_free, pad_to_multiple_of=plan.pad_to_multiple_of
        ),
        callbacks=callbacks,
    )
    return trainer
