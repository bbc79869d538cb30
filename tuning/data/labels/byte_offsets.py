"""Loss masks for byte-level BPE tokenizers without asking the tokenizer for offsets.

For a byte-level BPE tokenizer (GPT-2, Llama 3, Qwen, Granite, our tiny model) every token stands
for a fixed run of bytes of the text, and the tokens tile the text in order. A token's position is
then the running sum of its neighbours' byte lengths, read from a table built once per tokenizer.
That lets a batch be tokenized with `encode_batch_fast` (no offset tracking, about half the cost of
asking for offsets through transformers) and labelled with a few numpy operations for the whole
batch.

The shortcut is taken only where it is provably the same as the offsets: the tokenizer adds no
text (no normalizer that could change it, no prefix space), every token's bytes are known, and for
every row the tokens' bytes add up to exactly the text's bytes. Other tokenizers get None (the
caller uses the tokenizer's offsets); rows that cannot be proven go to the offsets path alone.
ByteLevel offset trimming (`trim_offsets`) is reproduced, so the labels equal those of the offsets
path token for token; tests compare both on many texts.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from tuning.data.labels.base import IGNORE_INDEX, row_offsets

_UNKNOWN = -(10**9)  # a byte length no row can add up to: forces the offsets path
# Normalizers that leave ASCII text unchanged: the shortcut is then used for ASCII batches only.
_ASCII_IDENTITY_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD"}
_ASCII_WHITESPACE = " \t\n\r\x0b\x0c"  # what Rust's char::is_whitespace accepts below 128
_SPACE_CHAR = "Ġ"  # the byte-level character for b" ", which trim_offsets also trims


Labelled = tuple[list[list[int]], list[list[int]]]  # input_ids and labels per row
# input_ids and labels of all rows one after another, and where each row starts (plus the end)
FlatLabelled = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ByteTable:
    """What the shortcut needs to know about one tokenizer."""

    byte_length: np.ndarray  # per token id; _UNKNOWN where the bytes are not fixed
    leading_spaces: np.ndarray  # trimmed from a token's start when trim_offsets is on
    trailing_spaces: np.ndarray
    trim_offsets: bool
    keep_first_prefix_space: bool  # ByteLevel's add_prefix_space exception for the first token
    ascii_only: bool  # the normalizer is the identity on ASCII text only


_TABLES: weakref.WeakKeyDictionary[Any, ByteTable | None] = weakref.WeakKeyDictionary()


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte <-> printable character table (each vocab character is one byte)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def _components(node: dict | None) -> list[dict]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        key = next(k for k in ("pretokenizers", "processors", "normalizers") if k in node)
        return [part for child in node[key] for part in _components(child)]
    return [node]


def _build_table(tokenizer: Any) -> ByteTable | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "split_special_tokens", False):
        return None
    if not hasattr(backend, "encode_batch_fast"):
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        return None
    pre = _components(spec.get("pre_tokenizer"))
    byte_level = [p for p in pre if p.get("type") == "ByteLevel"]
    # Split/Digits/Punctuation only cut the text; anything else (Metaspace, prefix spaces) adds.
    allowed = {"ByteLevel", "Split", "Digits", "Punctuation", "WhitespaceSplit"}
    if len(byte_level) != 1 or byte_level[0].get("add_prefix_space"):
        return None
    if any(p.get("type") not in allowed for p in pre):
        return None
    normalizers = [n.get("type") for n in _components(spec.get("normalizer"))]
    if any(n not in _ASCII_IDENTITY_NORMALIZERS for n in normalizers):
        return None
    processors = _components(spec.get("post_processor"))
    trim = next((p for p in processors if p.get("type") == "ByteLevel"), None)
    trim_offsets = bool(trim and trim.get("trim_offsets"))

    alphabet = _byte_level_alphabet()
    size = backend.get_vocab_size(with_added_tokens=True)
    byte_length = np.full(size, _UNKNOWN, dtype=np.int64)
    leading = np.zeros(size, dtype=np.int64)
    trailing = np.zeros(size, dtype=np.int64)
    for token, index in backend.get_vocab(with_added_tokens=False).items():
        if index < size and all(char in alphabet for char in token):
            byte_length[index] = len(token)
            leading[index] = len(token) - len(token.lstrip(_SPACE_CHAR))
            trailing[index] = len(token) - len(token.rstrip(_SPACE_CHAR))
    for index, added in backend.get_added_tokens_decoder().items():
        content = added.content
        # Trimming counts whitespace characters; count only one-byte ones, refuse the others.
        lead = len(content) - len(content.lstrip(_ASCII_WHITESPACE))
        trail = len(content) - len(content.rstrip(_ASCII_WHITESPACE))
        odd_edge = any(
            part[:1].isspace() or part[:1] == _SPACE_CHAR
            for part in (content[lead:], content[::-1][trail:])
        )
        usable = (
            index < size
            and not (added.lstrip or added.rstrip or added.single_word or odd_edge)
            and (not added.normalized or not normalizers)
        )
        if usable:
            byte_length[index] = len(content.encode("utf-8"))
            leading[index], trailing[index] = lead, trail
        elif index < size:
            byte_length[index] = _UNKNOWN
    unknown = model.get("unk_token")
    if unknown is not None and backend.token_to_id(unknown) is not None:
        # An <unk> the model emits stands for unknown bytes; poison it (a literal "<unk>" in the
        # text then also takes the offsets path, which is merely slower).
        byte_length[backend.token_to_id(unknown)] = _UNKNOWN
    return ByteTable(
        byte_length=byte_length,
        leading_spaces=leading,
        trailing_spaces=trailing,
        trim_offsets=trim_offsets,
        keep_first_prefix_space=bool(trim and trim.get("add_prefix_space")),
        ascii_only=bool(normalizers),
    )


def byte_table(tokenizer: Any) -> ByteTable | None:
    """The tokenizer's byte table, built once; None when the shortcut does not apply."""
    try:
        return _TABLES[tokenizer]
    except (KeyError, TypeError):
        pass
    table = _build_table(tokenizer)
    with contextlib.suppress(TypeError):  # an object without weak references is not cached
        _TABLES[tokenizer] = table
    return table


def _byte_positions(text: str) -> np.ndarray:
    """UTF-8 byte position of every character index of `text` (and of its end)."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
    return np.concatenate(([0], np.cumsum(widths)))


def encode_and_label(
    tokenizer: Any,
    texts: Sequence[str],
    spans: Sequence[Sequence[tuple[int, int]]],
    fallback: Callable[[list[str], list[Sequence[tuple[int, int]]]], Labelled],
) -> FlatLabelled | None:
    """input_ids and labels of a batch, flat (labels = ids inside spans); None if not applicable.

    A token is trained when its (trimmed) byte range overlaps a span, or when it is empty and
    starts inside one: the same rule as `masking.span_labels` on the tokenizer's offsets. Rows
    the shortcut cannot prove (an <unk>, a stripping added token, non-ASCII text under a
    normalizer) go to `fallback`, the offsets path, in one call.
    """
    table = byte_table(tokenizer)
    if table is None or not texts:
        return None
    texts = list(texts)
    eligible = [i for i, t in enumerate(texts) if t.isascii()] if table.ascii_only else None
    chosen = texts if eligible is None else [texts[i] for i in eligible]
    chosen_spans = spans if eligible is None else [spans[i] for i in eligible]
    encodings = tokenizer.backend_tokenizer.encode_batch_fast(chosen, add_special_tokens=False)
    ids, labels, offsets, exact = _label_proven_rows(
        table, chosen, chosen_spans, [e.ids for e in encodings]
    )
    if len(chosen) == len(texts) and exact.all():
        return ids, labels, offsets
    # Some rows need the offsets path: put every row's arrays back in the batch's order.
    id_parts: list[Any] = [None] * len(texts)
    label_parts: list[Any] = [None] * len(texts)
    positions = eligible if eligible is not None else range(len(texts))
    for row, (position, good) in enumerate(zip(positions, exact.tolist(), strict=True)):
        if good:
            start, stop = offsets[row], offsets[row + 1]
            id_parts[position], label_parts[position] = ids[start:stop], labels[start:stop]
    rest = [i for i, part in enumerate(id_parts) if part is None]
    rest_ids, rest_labels = fallback([texts[i] for i in rest], [spans[i] for i in rest])
    # (rest is never empty here: some row was not eligible or not proven)
    for position, row_ids, row_labels in zip(rest, rest_ids, rest_labels, strict=True):
        id_parts[position] = np.asarray(row_ids, dtype=np.int64)
        label_parts[position] = np.asarray(row_labels, dtype=np.int64)
    return np.concatenate(id_parts), np.concatenate(label_parts), row_offsets(id_parts)


def _label_proven_rows(
    table: ByteTable,
    texts: list[str],
    spans: Sequence[Sequence[tuple[int, int]]],
    rows: list[list[int]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ids, labels and row offsets of the rows proven exact, computed for the whole batch at
    once, and which rows those are (the others are left out of the arrays)."""
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(1, dtype=np.int64), np.zeros(0, dtype=bool)
    counts = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    ids = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(counts.sum()))
    known = ids < len(table.byte_length)
    lengths = np.where(known, table.byte_length[np.where(known, ids, 0)], _UNKNOWN)
    text_bytes = np.fromiter(
        (len(t) if t.isascii() else len(t.encode("utf-8")) for t in texts),
        dtype=np.int64,
        count=len(texts),
    )
    row_first = np.concatenate(([0], np.cumsum(counts)))
    running = np.concatenate(([0], np.cumsum(lengths)))
    exact = running[row_first[1:]] - running[row_first[:-1]] == text_bytes
    if not exact.all():
        # Some token's bytes are not the text's (unknown, stripped, normalized): drop those rows.
        keep = np.repeat(exact, counts)
        ids, lengths, counts = ids[keep], lengths[keep], np.where(exact, counts, 0)
        text_bytes = np.where(exact, text_bytes, 0)
        row_first = np.concatenate(([0], np.cumsum(counts)))
        running = np.concatenate(([0], np.cumsum(lengths)))
    # Rows sit one byte apart in one position space, so no position is shared by two rows.
    row_base = np.concatenate(([0], np.cumsum(text_bytes + 1)[:-1]))
    token_row = np.repeat(np.arange(len(texts)), counts)
    shift = (row_base - running[row_first[:-1]])[token_row]
    starts = running[:-1] + shift
    ends = running[1:] + shift
    if table.trim_offsets:
        leading = table.leading_spaces[ids]
        if table.keep_first_prefix_space:
            leading = np.where((starts == row_base[token_row]) & (leading == 1), 0, leading)
        starts = np.minimum(starts + leading, ends)
        ends = np.maximum(ends - table.trailing_spaces[ids], starts)

    span_starts, span_ends = [], []
    for text, base, good, text_spans in zip(
        texts, row_base.tolist(), exact.tolist(), spans, strict=True
    ):
        if not good or not text_spans:
            continue
        if text.isascii():
            for start, end in text_spans:
                if end > start:
                    span_starts.append(base + start)
                    span_ends.append(base + end)
            continue
        byte_at = _byte_positions(text)
        for start, end in text_spans:
            if end > start:
                span_starts.append(base + int(byte_at[start]))
                span_ends.append(base + int(byte_at[end]))
    trained = np.zeros(len(ids) + 1, dtype=np.int64)
    if span_starts:
        # Tokens overlapping [s, e): end > s (empty tokens: start >= s) and start < e. Both keys
        # are sorted, so each span is a slice found by binary search.
        key = 2 * ends + (ends == starts)
        first = np.searchsorted(key, 2 * np.asarray(span_starts), side="right")
        stop = np.maximum(np.searchsorted(starts, np.asarray(span_ends), side="left"), first)
        np.add.at(trained, first, 1)
        np.add.at(trained, stop, -1)
    labels = np.where(np.cumsum(trained[:-1]) > 0, ids, IGNORE_INDEX)
    return ids, labels, row_first, exact
