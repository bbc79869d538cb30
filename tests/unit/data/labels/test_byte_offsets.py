"""The byte-length shortcut labels exactly like the tokenizer's offsets, or steps aside."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from tuning.data.labels.base import IGNORE_INDEX
from tuning.data.labels.byte_offsets import byte_table, encode_and_label
from tuning.data.labels.masking import encode_with_spans, offset_labels

PIECES = [
    "Hello", " world", "\n", "  ", "<|end|>", "<|assistant|>", "é", "日本語", " 🙂", "\t", "x",
    "  \n ", "<s>", "</s>", "ab c", " ", "<tool>", " sep ", "123", "\u00a0", "<unk>",
]  # fmt: skip


def random_rows(count: int, seed: int = 0) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Texts mixing words, spaces, special tokens and multi-byte characters, with random spans."""
    rng = random.Random(seed)
    texts, spans = [], []
    for _ in range(count):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 25)))
        row = []
        for _ in range(rng.randint(0, 3)):
            a, b = rng.randint(0, len(text)), rng.randint(0, len(text))
            row.append((min(a, b), max(a, b)))
        texts.append(text)
        spans.append(row)
    return texts, spans


def as_rows(flat) -> tuple[list[list[int]], list[list[int]]] | None:
    """The shortcut's flat arrays as per-row lists, to compare with the offsets path."""
    if flat is None:
        return None
    ids, labels, offsets = flat
    bounds = offsets.tolist()
    return (
        [ids[a:b].tolist() for a, b in pairwise(bounds)],
        [labels[a:b].tolist() for a, b in pairwise(bounds)],
    )


def variant(base, change) -> PreTrainedTokenizerFast:
    backend = Tokenizer.from_str(base.backend_tokenizer.to_str())
    change(backend)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")


def _trim(backend):
    backend.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=True)


def _trim_prefix(backend):
    backend.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=True)


def _nfc(backend):
    backend.normalizer = normalizers.NFC()


def _stripping_token(backend):
    backend.add_tokens([AddedToken("<tool>", lstrip=True, rstrip=True)])


def _spaced_token(backend):
    backend.add_tokens([AddedToken(" sep ", normalized=False, special=False)])


def _digits(backend):
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )


def _llama3_style_split(backend):
    pattern = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _trim_and_spaced_token(backend):
    _trim(backend)
    backend.add_tokens([AddedToken(" sep ", normalized=False, special=False)])


def _unchanged(backend):
    pass


VARIANTS = {
    "as shipped": _unchanged,
    "trim_offsets": _trim,
    "trim_offsets with add_prefix_space": _trim_prefix,
    "NFC normalizer": _nfc,
    "lstrip/rstrip added token": _stripping_token,
    "added token with spaces": _spaced_token,
    "trim_offsets and an added token with spaces": _trim_and_spaced_token,
    "digits pre-tokenizer": _digits,
    "Llama-3-style split pre-tokenizer": _llama3_style_split,
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_labels_equal_the_offsets_path(tiny_tokenizer, name):
    tokenizer = variant(tiny_tokenizer, VARIANTS[name])
    assert byte_table(tokenizer) is not None
    texts, spans = random_rows(600, seed=len(name))
    expected = offset_labels(tokenizer, texts, spans)
    got = as_rows(
        encode_and_label(tokenizer, texts, spans, lambda t, s: offset_labels(tokenizer, t, s))
    )
    assert got is not None
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    # and row by row (no neighbour can influence a row)
    for text, row_spans, ids, labels in list(zip(texts, spans, *expected, strict=True))[:150]:
        one = as_rows(
            encode_and_label(
                tokenizer, [text], [row_spans], lambda t, s: offset_labels(tokenizer, t, s)
            )
        )
        assert one == ([ids], [labels])


def test_unprovable_rows_go_to_the_fallback_alone(tiny_tokenizer):
    texts = ["<|user|>\nhi<|end|>", "literal <unk> here", "é and <|end|>", ""]
    spans = [[(8, 18)], [(0, 7)], [(0, 2)], []]
    sent = []

    def fallback(rest, rest_spans):
        sent.append(list(rest))
        return offset_labels(tiny_tokenizer, rest, rest_spans)

    got = as_rows(encode_and_label(tiny_tokenizer, texts, spans, fallback))
    assert sent == [["literal <unk> here"]]  # <unk> might stand for unknown bytes: not proven
    assert got == offset_labels(tiny_tokenizer, texts, spans)


def test_normalizer_sends_non_ascii_rows_to_the_fallback(tiny_tokenizer):
    tokenizer = variant(tiny_tokenizer, _nfc)
    sent = []

    def fallback(rest, rest_spans):
        sent.extend(rest)
        return offset_labels(tokenizer, rest, rest_spans)

    texts = ["plain ascii", "cafe\u0301 decomposed", "more ascii"]
    spans = [[(0, 5)], [(0, 4)], [(5, 10)]]
    got = as_rows(encode_and_label(tokenizer, texts, spans, fallback))
    assert sent == ["cafe\u0301 decomposed"]
    assert got == offset_labels(tokenizer, texts, spans)


def test_tokenizers_that_add_text_do_not_take_the_shortcut(tiny_tokenizer):
    def prefix_space(backend):
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)

    def metaspace(backend):
        backend.pre_tokenizer = pre_tokenizers.Metaspace()

    for change in (prefix_space, metaspace):
        tokenizer = variant(tiny_tokenizer, change)
        assert byte_table(tokenizer) is None
        assert encode_and_label(tokenizer, ["a b"], [[(0, 1)]], lambda t, s: ([], [])) is None


def test_encode_with_spans_exact_labels_on_both_paths(tiny_tokenizer):
    text = "<|user|>\nhi<|end|>\n<|assistant|>\nok<|end|>\n"
    start = text.index("ok")
    spans = [[(start, start + len("ok<|end|>"))]]
    fast = encode_with_spans(tiny_tokenizer, [text], spans, None).rows()[0]
    ids, labels = offset_labels(tiny_tokenizer, [text], spans)
    assert fast.input_ids == ids[0] and fast.labels == labels[0]
    trained = [
        i for i, label in zip(fast.input_ids, fast.labels, strict=True) if label != IGNORE_INDEX
    ]
    assert tiny_tokenizer.decode(trained) == "ok<|end|>"
