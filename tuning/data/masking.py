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
from operator import itemgetter
from typing import Any

IGNORE_INDEX = -100
Span = tuple[int, int]


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


def require_fast_tokenizer(tokenizer: Any) -> None:
    """Offsets need a fast (Rust) tokenizer; say so instead of masking wrongly."""
    from tuning.errors import ConfigError

    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"The tokenizer {type(tokenizer).__name__} is not a fast tokenizer, so character "
            "offsets (used to build exact loss masks) are unavailable. Use a tokenizer with a "
            "tokenizer.json (PreTrainedTokenizerFast)."
        )


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


def encode_with_spans(
    tokenizer: Any,
    texts: Sequence[str],
    spans: Sequence[Sequence[Span]],
    max_length: int | None,
) -> list[Encoded]:
    """Tokenize a batch of rendered texts and label the tokens inside each text's spans.

    Byte-level BPE tokenizers take the shortcut in `byte_offsets` (same labels, no offset
    tracking); any other tokenizer labels from its offset_mapping.
    """
    from tuning.data.byte_offsets import encode_and_label

    shortcut = encode_and_label(
        tokenizer, texts, spans, lambda rest, rest_spans: offset_labels(tokenizer, rest, rest_spans)
    )
    if shortcut is not None:
        all_ids, all_labels = shortcut
    else:
        all_ids, all_labels = offset_labels(tokenizer, texts, spans)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    results = []
    for ids, labels in zip(all_ids, all_labels, strict=True):
        keep_first = bool(ids) and bos_id is not None and ids[0] == bos_id
        results.append(fit_to_length(list(ids), labels, max_length, keep_first))
    return results


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
