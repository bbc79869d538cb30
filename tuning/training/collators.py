"""Batch collation: dynamic padding, or padding-free rows with position_ids.

Labels come from the masks computed at preprocessing; the collator only pads (-100 for labels).
"""

from __future__ import annotations

from typing import Any

from tuning.errors import ConfigError
from tuning.models.attention import keeps_sequences_apart


def check_padding_free(attention: str, padding_free: bool) -> None:
    """Padding-free rows are only correct when attention stops at sequence boundaries."""
    if padding_free and not keeps_sequences_apart(attention):
        raise ConfigError(
            f"--padding_free/--packing concatenate samples into one row, but the attention "
            f"implementation is {attention!r}, which would let tokens attend across samples. "
            "Use flash-attention (--use_flash_attn true on a CUDA GPU with flash-attn installed) "
            "or drop --padding_free/--packing."
        )


def build_collator(tokenizer: Any, *, padding_free: bool, pad_to_multiple_of: int | None) -> Any:
    """trl's language-modeling collator, fed our pre-computed labels."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(
        pad_token_id=tokenizer.pad_token_id,
        padding_free=padding_free,
        pad_to_multiple_of=pad_to_multiple_of,
    )
