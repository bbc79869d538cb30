"""Attention choice degrades clearly where flash-attention cannot run."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from tuning.config.job import build_job_config
from tuning.config.parse import parse_cli
from tuning.models.attention import choose_attention
from tuning.models.plan import build_model_plan
from tuning.problems import Problems


def _model_plan(tiny_model_dir, *flags: str):
    job = build_job_config(parse_cli(["--model_name_or_path", str(tiny_model_dir), *flags]))
    problems = Problems()
    plan = build_model_plan(job, problems)
    assert not problems, problems.items
    return plan


def test_flash_attention_degrades_to_sdpa_without_gpu(caplog, tiny_model_dir):
    with caplog.at_level(logging.WARNING):
        assert choose_attention(_model_plan(tiny_model_dir), cuda_available=False) == "sdpa"
    assert "no CUDA GPU" in caplog.text
    no_flash = _model_plan(tiny_model_dir, "--use_flash_attn", "false")
    assert choose_attention(no_flash, cuda_available=True) == "sdpa"


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn present")
def test_flash_attention_without_package_names_the_extra(caplog, tiny_model_dir):
    with caplog.at_level(logging.WARNING):
        assert choose_attention(_model_plan(tiny_model_dir), cuda_available=True) == "sdpa"
    assert "tuneforge[flash-attn]" in caplog.text
