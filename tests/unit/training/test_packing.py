"""BFD packing keeps every sample's tokens and labels together and within max_length."""

from __future__ import annotations

from datasets import Dataset

from tuning.training.stage import _pack


def test_bfd_packing_keeps_labels_aligned_and_fits():
    rows = [
        {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, 3, 4, 5], "extra": "x"},
        {"input_ids": [6, 7], "labels": [-100, 7], "extra": "y"},
        {"input_ids": [8, 9, 10], "labels": [-100, 9, 10], "extra": "z"},
    ]
    packed = _pack(Dataset.from_list(rows), max_length=8)
    assert set(packed.column_names) == {"input_ids", "labels", "seq_lengths"}
    assert len(packed) == 2
    for row in packed:
        assert len(row["input_ids"]) <= 8
        assert sum(row["seq_lengths"]) == len(row["input_ids"]) == len(row["labels"])
    pairs = {tuple(zip(row["input_ids"], row["labels"], strict=True)) for row in packed}
    flat = {pair for row in pairs for pair in row}
    originals = {pair for r in rows for pair in zip(r["input_ids"], r["labels"], strict=True)}
    assert flat == originals
