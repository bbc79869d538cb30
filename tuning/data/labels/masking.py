"""Tokens and loss masks from character spans of the rendered text.

Every masking mode (completion after a response template, input/output, chat) renders one string
and marks the character spans to train. The fast tokenizer's offset_mapping then decides, token by
token, what is trained. Nothing searches token ids of a separately tokenized template, because the
same text tokenizes differently in context.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, pairwise
from operator import itemgetter
from typing import Any

import numpy as np

from tuning.data.labels.base import IGNORE_INDEX, Span, row_offsets


@dataclass(frozen=True)
class Encoded:
    """One sample's tokens and labels, plus what truncation removed."""

    input_ids: list[int]
    labels: list[int]
    trimmed_prompt_tokens: int = 0
    trimmed_response_tokens: int = 0

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def _trained_indices(offsets: Sequence[Sequence[int]], spans: Sequence[Span]):
    """Indices of tokens whose characters overlap a trained span.

    Offsets are sorted, so each span is found by bisection: the cost is the trained tokens
    plus a logarithm, not a pass over every token.
    """
    count = len(offsets)
    for span_start, span_end in spans:
        if span_end <= span_start:
            continue
        # First token that could overlap: the one starting at/after span_start, or the one before
        # it when that one straddles the span start.
        index = max(bisect_left(offsets, span_start, key=itemgetter(0)) - 1, 0)
        while index < count and offsets[index][0] < span_end:
            start, end = offsets[index]
            if (end > span_start and start < span_end) or (start == end and start >= span_start):
                yield index
            index += 1


def span_labels(ids: Sequence[int], offsets: Sequence[Sequence[int]], spans: Sequence[Span]):
    """Labels: the token id inside trained spans, IGNORE_INDEX elsewhere."""
    labels = [IGNORE_INDEX] * len(ids)
    for index in _trained_indices(offsets, spans):
        labels[index] = ids[index]
    return labels


def fit_to_length(
    input_ids: list[int], labels: list[int], max_length: int | None, keep_first: bool
) -> Encoded:
    """Trim to max_length, keeping the response: drop prompt tokens from the left first.

    The first token is kept when it is a BOS. Tokens are never dropped past the start of the
    last trained span from the left; if the trained part alone is too long, its tail goes.
    """
    if max_length is None or len(input_ids) <= max_length:
        return Encoded(input_ids, labels)
    excess = len(input_ids) - max_length
    head = 1 if keep_first else 0
    last_span_start = _last_span_start(labels)
    left_budget = max(last_span_start - head, 0)
    from_left = min(excess, left_budget)
    ids = input_ids[:head] + input_ids[head + from_left :]
    labs = labels[:head] + labels[head + from_left :]
    from_right = len(ids) - max_length
    if from_right > 0:
        ids, labs = ids[:max_length], labs[:max_length]
    return Encoded(
        ids, labs, trimmed_prompt_tokens=from_left, trimmed_response_tokens=max(from_right, 0)
    )


def _last_span_start(labels: list[int]) -> int:
    """Index where the last run of trained labels begins (len(labels) if none)."""
    index = len(labels)
    while index > 0 and labels[index - 1] == IGNORE_INDEX:
        index -= 1
    if index == 0:
        return len(labels)
    while index > 0 and labels[index - 1] != IGNORE_INDEX:
        index -= 1
    return index


@dataclass(frozen=True)
class EncodedBatch:
    """A tokenized batch as flat arrays: row i is ids[offsets[i]:offsets[i + 1]].

    Flat arrays go to Arrow without a Python list per row; `rows()` and `columns()` give the
    per-row view where one is wanted.
    """

    ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    trimmed_prompt: np.ndarray
    trimmed_response: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def _split(self, flat: np.ndarray) -> list[list[int]]:
        values, bounds = flat.tolist(), self.offsets.tolist()
        return [values[bounds[i] : bounds[i + 1]] for i in range(len(self))]

    def rows(self) -> list[Encoded]:
        return [
            Encoded(ids, labels, prompt, response)
            for ids, labels, prompt, response in zip(
                self._split(self.ids),
                self._split(self.labels),
                self.trimmed_prompt.tolist(),
                self.trimmed_response.tolist(),
                strict=True,
            )
        ]

    def columns(self) -> dict[str, list[Any]]:
        """input_ids, labels and the trimmed counts as Python lists (one entry per row)."""
        return {
            "input_ids": self._split(self.ids),
            "labels": self._split(self.labels),
            "trimmed_prompt": self.trimmed_prompt.tolist(),
            "trimmed_response": self.trimmed_response.tolist(),
        }

    def arrow_columns(self) -> dict[str, Any]:
        """The same columns as pyarrow arrays, with the types datasets would give them."""
        import pyarrow as pa

        offsets = pa.array(self.offsets.astype(np.int32))
        return {
            "input_ids": pa.ListArray.from_arrays(offsets, pa.array(self.ids.astype(np.int32))),
            "labels": pa.ListArray.from_arrays(offsets, pa.array(self.labels)),
            "trimmed_prompt": pa.array(self.trimmed_prompt),
            "trimmed_response": pa.array(self.trimmed_response),
        }


def encode_with_spans(
    tokenizer: Any,
    texts: Sequence[str],
    spans: Sequence[Sequence[Span]],
    max_length: int | None,
) -> EncodedBatch:
    """Tokenize a batch of rendered texts and label the tokens inside each text's spans.

    Byte-level BPE tokenizers take the shortcut in `byte_offsets` (same labels, no offset
    tracking); any other tokenizer labels from its offset_mapping. Rows longer than max_length
    are fitted by `fit_to_length`.
    """
    from tuning.data.labels.byte_offsets import encode_and_label

    flat = encode_and_label(
        tokenizer, texts, spans, lambda rest, rest_spans: offset_labels(tokenizer, rest, rest_spans)
    )
    if flat is None:
        id_rows, label_rows = offset_labels(tokenizer, texts, spans)
        flat = _flatten(id_rows), _flatten(label_rows), row_offsets(id_rows)
    return _fit_batch(*flat, max_length, getattr(tokenizer, "bos_token_id", None))


def _flatten(rows: Sequence[Sequence[int]]) -> np.ndarray:
    return np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=sum(map(len, rows)))


def _fit_batch(
    ids: np.ndarray,
    labels: np.ndarray,
    offsets: np.ndarray,
    max_length: int | None,
    bos_id: int | None,
) -> EncodedBatch:
    """Apply fit_to_length to the rows that are too long; the others pass untouched."""
    count = len(offsets) - 1
    trimmed_prompt = np.zeros(count, dtype=np.int64)
    trimmed_response = np.zeros(count, dtype=np.int64)
    lengths = np.diff(offsets)
    if max_length is None or count == 0 or int(lengths.max()) <= max_length:
        return EncodedBatch(ids, labels, offsets, trimmed_prompt, trimmed_response)
    id_parts, label_parts = [], []
    for row, (start, stop) in enumerate(pairwise(offsets.tolist())):
        if stop - start <= max_length:
            id_parts.append(ids[start:stop])
            label_parts.append(labels[start:stop])
            continue
        row_ids = ids[start:stop].tolist()
        keep_first = bos_id is not None and row_ids[0] == bos_id
        fitted = fit_to_length(row_ids, labels[start:stop].tolist(), max_length, keep_first)
        id_parts.append(np.asarray(fitted.input_ids, dtype=np.int64))
        label_parts.append(np.asarray(fitted.labels, dtype=np.int64))
        trimmed_prompt[row] = fitted.trimmed_prompt_tokens
        trimmed_response[row] = fitted.trimmed_response_tokens
    return EncodedBatch(
        np.concatenate(id_parts),
        np.concatenate(label_parts),
        row_offsets(id_parts),
        trimmed_prompt,
        trimmed_response,
    )


def offset_labels(
    tokenizer: Any, texts: Sequence[str], spans: Sequence[Sequence[Span]]
) -> tuple[list[list[int]], list[list[int]]]:
    """input_ids and labels from the tokenizer's own offset_mapping (works for any fast one)."""
    batch = tokenizer(
        list(texts),
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        truncation=False,
        verbose=False,
    )
    labels = [
        span_labels(ids, offsets, text_spans)
        for ids, offsets, text_spans in zip(
            batch["input_ids"], batch["offset_mapping"], spans, strict=True
        )
    ]
    return batch["input_ids"], labels


def completion_spans(
    text: str, response_template: str, instruction_template: str | None
) -> list[Span]:
    """Spans after each response template (up to the next instruction template, if given).

    Without an instruction template only the last response is trained, which is what a single
    prompt/response sample means.
    """
    spans: list[Span] = []
    if instruction_template is None:
        position = text.rfind(response_template)
        if position >= 0:
            spans.append((position + len(response_template), len(text)))
        return spans
    cursor = 0
    while True:
        position = text.find(response_template, cursor)
        if position < 0:
            break
        start = position + len(response_template)
        stop = text.find(instruction_template, start)
        end = len(text) if stop < 0 else stop
        spans.append((start, end))
        cursor = end
    return spans
