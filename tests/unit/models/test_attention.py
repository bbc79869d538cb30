"""Attention: every implementation transformers accepts, a fallback chain decided at plan time
(asked -> flash_attention_2 -> sdpa) with one warning, finalised at load.

Why: fms's documented gpt-oss command asks for the hub kernel kernels-community/vllm-flash-attn3;
we used to refuse it. A kernel that cannot run here must fall back loudly, never silently, and
never crash at load with an ImportError.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging

import pytest

from tuning.config.job import build_job_config
from tuning.config.parse import collect_values
from tuning.errors import ConfigError
from tuning.models import attention
from tuning.models.attention import AttentionPlan, choose_attention, plan_attention
from tuning.models.plan import build_model_plan
from tuning.problems import Problems


def _installed(monkeypatch, *packages: str, kernels_version: str = "0.18.2") -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        attention.importlib.util,
        "find_spec",
        lambda name, *a: object() if name in packages else real(name, *a),
    )
    real_version = importlib.metadata.version
    monkeypatch.setattr(
        attention.importlib.metadata,
        "version",
        lambda name: kernels_version if name == "kernels" else real_version(name),
    )


def _warnings(caplog, plan, cuda=False, sdpa=True) -> tuple[str, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tuning.models.attention"):
        chosen = choose_attention(plan, cuda_available=cuda, sdpa_supported=sdpa)
    return chosen, [r.getMessage() for r in caplog.records]


def test_on_a_laptop_flash_falls_back_to_sdpa_with_one_warning(caplog):
    plan = plan_attention(True, None, False, gpus=False, sdpa_only=False)
    assert plan.asked == "flash_attention_2" and plan.chain == ("sdpa",)
    chosen, (warning,) = _warnings(caplog, plan)
    assert chosen == "sdpa"
    assert "flash_attention_2 was asked (use_flash_attn); sdpa is used" in warning
    assert "no CUDA GPU is visible" in warning


def test_the_fms_gpt_oss_hub_kernel_is_accepted_and_falls_back(monkeypatch, caplog):
    _installed(monkeypatch, "flash_attn")
    plan = plan_attention(
        True, "kernels-community/vllm-flash-attn3", True, gpus=True, sdpa_only=False
    )
    assert plan.asked == "kernels-community/vllm-flash-attn3"
    assert plan.chain == ("flash_attention_2", "sdpa")
    assert "pip install 'tuneforge[kernels]'" in plan.reasons[0]
    chosen, (warning,) = _warnings(caplog, plan, cuda=True)
    assert chosen == "flash_attention_2" and "--flash_attn_implementation" in warning


def test_a_kernels_version_outside_transformers_range_falls_back(monkeypatch):
    _installed(monkeypatch, "kernels", kernels_version="0.12.0")
    plan = plan_attention(True, "fa3", True, gpus=True, sdpa_only=False)
    assert plan.chain[0] != attention.FA3_HUB_KERNEL
    assert "kernels 0.12.0 is installed but transformers needs kernels>=" in plan.reasons[0]
    _installed(monkeypatch, "kernels", "flash_attn", kernels_version="0.18.2")
    plan = plan_attention(True, "fa3", True, gpus=True, sdpa_only=False)
    assert plan.chain == (attention.FA3_HUB_KERNEL, "flash_attention_2", "sdpa")
    assert plan.reasons == ()


@pytest.mark.parametrize("name", ["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention", "owner/kernel@v1:fwd"])  # fmt: skip
def test_every_name_transformers_accepts_is_valid(name):
    plan = plan_attention(True, name, True, gpus=False, sdpa_only=False)
    assert plan.asked == name and plan.chain[-1] == "sdpa"


def test_use_flash_attn_false_and_context_parallel_mean_sdpa():
    assert plan_attention(False, "fa2", True, gpus=True, sdpa_only=False).chain == ("sdpa",)
    assert plan_attention(True, None, False, gpus=True, sdpa_only=True).chain == ("sdpa",)


def test_a_wrong_name_is_a_plan_error(tiny_model_dir):
    job = build_job_config(
        collect_values(
            ["--model_name_or_path", str(tiny_model_dir), "--flash_attn_implementation", "fa4"],
            environ={},
        )
    )
    problems = Problems()
    build_model_plan(job, problems)
    with pytest.raises(
        ConfigError,
        match=r"--flash_attn_implementation: unknown attention implementation 'fa4'\. Did you mean",
    ):
        problems.raise_if_any()


def test_load_finalises_the_chain_when_torch_sees_no_gpu(caplog):
    plan = AttentionPlan("flash_attention_2", ("flash_attention_2", "sdpa"))
    chosen, (warning,) = _warnings(caplog, plan, cuda=False)
    assert chosen == "sdpa" and "flash_attention_2: torch sees no usable CUDA GPU" in warning
    assert _warnings(caplog, plan, cuda=True) == ("flash_attention_2", [])


def test_an_architecture_without_sdpa_ends_the_chain_at_eager_in_the_same_warning(caplog):
    plan = plan_attention(True, "kernels-community/vllm-flash-attn3", True, False, False)
    chosen, (warning,) = _warnings(caplog, plan, sdpa=False)
    assert chosen == "eager"
    assert "kernels-community/vllm-flash-attn3: the `kernels` package" in warning
    assert "sdpa: this model's architecture does not support it" in warning
