"""aLoRA: every training sample must contain the invocation tokens (the adapter acts from them
on). A sample without them trains nothing useful, so they are counted like a missing response
template and stop the run with the count, an example and the fix."""

from __future__ import annotations

from typing import Any

import numpy as np

from tuning.errors import DataError


def rows_without(dataset: Any, tokens: list[int]) -> list[int]:
    """Indices of rows whose input_ids lack the token sequence (byte search, aligned)."""
    pattern = np.asarray(tokens, dtype=np.int64).tobytes()
    missing = []
    for index, row in enumerate(dataset.with_format("numpy")["input_ids"]):
        data = np.asarray(row, dtype=np.int64).tobytes()
        position = data.find(pattern)
        while position != -1 and position % 8:
            position = data.find(pattern, position + 1)
        if position == -1:
            missing.append(index)
    return missing


def check_invocation(dataset: Any, tokens: list[int], text: str, tokenizer: Any) -> None:
    """DataError when any training sample lacks the aLoRA invocation tokens."""
    missing = rows_without(dataset, tokens)
    if not missing:
        return
    example = tokenizer.decode(dataset[missing[0]]["input_ids"])[:200]
    raise DataError(
        f"--alora_invocation_string {text!r} (tokens {tokens}) does not occur in {len(missing)} "
        f"of {len(dataset)} training samples, e.g. {example!r}. The adapter only acts from those "
        "tokens on: put the invocation string in every sample (as the text that starts the "
        "response), and check that it tokenizes the same in context."
    )
