"""Padding-free batches give the same loss as padded ones; the boundary check."""

from __future__ import annotations

import pytest
import torch

from tuning.errors import ConfigError
from tuning.training.collators import build_collator, check_padding_free

EXAMPLES = [
    {"input_ids": [1, 10, 11, 12, 13, 14], "labels": [-100, -100, 11, 12, 13, 14]},
    {"input_ids": [1, 20, 21, 22], "labels": [-100, -100, 21, 22]},
    {"input_ids": [1, 30, 31, 32, 33, 34, 35, 36], "labels": [-100, 30, 31, 32, 33, 34, 35, 36]},
]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(tiny_model_dir), dtype=torch.float32, attn_implementation="sdpa"
    ).eval()


def test_padded_batch_pads_labels_with_ignore_index(tiny_tokenizer):
    batch = build_collator(tiny_tokenizer, padding_free=False, pad_to_multiple_of=4)(EXAMPLES)
    assert batch["input_ids"].shape == (3, 8)
    assert batch["labels"][1].tolist() == [-100, -100, 21, 22, -100, -100, -100, -100]
    assert batch["input_ids"][1].tolist()[4:] == [tiny_tokenizer.pad_token_id] * 4
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_padding_free_batch_is_one_row_with_position_ids(tiny_tokenizer):
    batch = build_collator(tiny_tokenizer, padding_free=True, pad_to_multiple_of=None)(EXAMPLES)
    assert batch["input_ids"].shape == (1, 18)
    assert batch["position_ids"][0].tolist() == [*range(6), *range(4), *range(8)]
    assert "attention_mask" not in batch
    # The first token of each sample is never a target of the previous sample.
    assert batch["labels"][0].tolist()[6] == -100 and batch["labels"][0].tolist()[10] == -100


def test_padding_free_loss_equals_padded_loss(tiny_model, tiny_tokenizer):
    padded = build_collator(tiny_tokenizer, padding_free=False, pad_to_multiple_of=None)(EXAMPLES)
    packed = build_collator(tiny_tokenizer, padding_free=True, pad_to_multiple_of=None)(EXAMPLES)
    with torch.no_grad():
        padded_loss = tiny_model(**padded, use_cache=False).loss
        packed_loss = tiny_model(**packed, use_cache=False).loss
    assert abs(padded_loss.item() - packed_loss.item()) < 1e-5


def test_padding_free_needs_boundary_aware_attention():
    check_padding_free("sdpa", True)
    check_padding_free("flash_attention_2", True)
    check_padding_free("some_paged_kernel", False)
    with pytest.raises(ConfigError, match="attend across samples"):
        check_padding_free("some_paged_kernel", True)
