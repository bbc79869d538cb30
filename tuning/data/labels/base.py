"""What every labelling routine shares: the ignore index, spans, row offsets, the fast-tokenizer
requirement. Its own module so masking and the byte-offset shortcut need not import each other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tuning.errors import ConfigError

IGNORE_INDEX = -100
Span = tuple[int, int]


def require_fast_tokenizer(tokenizer: Any) -> None:
    """Offsets need a fast (Rust) tokenizer; say so instead of masking wrongly."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"The tokenizer {type(tokenizer).__name__} is not a fast tokenizer, so character "
            "offsets (used to build exact loss masks) are unavailable. Use a tokenizer with a "
            "tokenizer.json (PreTrainedTokenizerFast)."
        )


def row_offsets(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Where each row starts in the rows laid end to end, plus where the last one ends."""
    return np.concatenate(([0], np.cumsum([len(row) for row in rows], dtype=np.int64)))
