"""Attention choice, optional extras and tracker mapping fail or degrade clearly."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from tuning.config.job import build_job_config
from tuning.config.parse import parse_cli
from tuning.errors import ConfigError, MissingExtraError
from tuning.models.attention import choose_attention
from tuning.training.trainer import report_to


def _model_args(*flags: str):
    job = build_job_config(
        parse_cli(
            ["--model_name_or_path", "m", "--output_dir", "o", "--training_data_path", "d", *flags]
        )
    )
    return job.model


def test_flash_attention_degrades_to_sdpa_without_gpu(caplog):
    with caplog.at_level(logging.WARNING):
        assert choose_attention(_model_args(), cuda_available=False) == "sdpa"
    assert "no CUDA GPU" in caplog.text
    assert choose_attention(_model_args("--use_flash_attn", "false"), cuda_available=True) == "sdpa"


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn present")
def test_flash_attention_without_package_names_the_extra(caplog):
    with caplog.at_level(logging.WARNING):
        assert choose_attention(_model_args(), cuda_available=True) == "sdpa"
    assert "tuneforge[flash-attn]" in caplog.text


@pytest.mark.skipif(importlib.util.find_spec("kernels") is not None, reason="kernels present")
def test_fa3_without_kernels_names_the_extra():
    with pytest.raises(MissingExtraError, match=r"pip install 'tuneforge\[kernels\]'"):
        choose_attention(_model_args("--flash_attn_implementation", "fa3"), cuda_available=True)


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow present")
def test_missing_tracker_package_names_the_extra():
    with pytest.raises(MissingExtraError, match=r"pip install 'tuneforge\[mlflow\]'"):
        report_to(["mlflow"])


def test_trackers_map_to_report_to():
    assert report_to(["file_logger"]) == ["none"]
    assert report_to(["none"]) == ["none"]
    with pytest.raises(ConfigError, match="unknown tracker"):
        report_to(["wandbx"])
