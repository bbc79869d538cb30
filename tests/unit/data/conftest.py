"""Shared data-test fixtures."""

from __future__ import annotations

import pytest

from tuning.config.schema import DataArgs
from tuning.data.pipeline import prepare_datasets
from tuning.data.plan import plan_data


@pytest.fixture
def prepare(tiny_tokenizer, tmp_path):
    """Plan the data flags and run the data stage with the tiny tokenizer."""

    def call(max_len: int = 128, **flags):
        return prepare_datasets(
            plan_data(DataArgs(**flags)),
            tiny_tokenizer,
            max_len,
            cache_dir=str(tmp_path / "hf-cache"),
        )

    return call
