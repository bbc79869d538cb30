"""PEFT arguments are checked at plan time against the installed peft (read from its source)."""

from __future__ import annotations

import dataclasses

import pytest

from tuning.config.job import build_job_config
from tuning.config.parse import collect_values
from tuning.errors import ConfigError
from tuning.models import plan as model_plan
from tuning.models.plan import LORA_ARGS, PEFT_FIELD, installed_lora_fields
from tuning.problems import Problems


def test_every_lora_flag_is_a_field_of_the_installed_peft():
    from peft import LoraConfig

    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    own = installed_lora_fields()
    assert own is not None and own <= fields  # read from the source, without importing peft
    assert {PEFT_FIELD.get(n, n) for n in (*LORA_ARGS, "alora_invocation_string")} <= own


def test_a_flag_the_installed_peft_lacks_is_a_plan_error(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(model_plan, "installed_lora_fields", lambda: frozenset({"r", "lora_alpha"}))
    argv = [
        "--model_name_or_path", str(tiny_model_dir), "--peft_method", "lora",
        "--target_parameters", "mlp.experts.gate_up_proj",
    ]  # fmt: skip
    problems = Problems()
    model_plan.build_model_plan(build_job_config(collect_values(argv, environ={})), problems)
    with pytest.raises(ConfigError, match=r"--target_parameters: the installed peft has no"):
        problems.raise_if_any()
