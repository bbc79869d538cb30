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


def _plan(tiny_model_dir, *flags):
    argv = ["--model_name_or_path", str(tiny_model_dir), "--peft_method", "lora", *flags]
    problems = Problems()
    plan = model_plan.build_model_plan(build_job_config(collect_values(argv, environ={})), problems)
    return plan, problems


@pytest.mark.parametrize(
    ("flag", "value", "cls", "field", "expected"),
    [
        ("--kasa_config", '{"beta": 0.001}', "KasaConfig", "beta", 0.001),
        ("--velora_config", '{"num_groups": 4}', "VeloraConfig", "num_groups", 4),
        ("--use_bdlora", '{"nblocks": 2}', "BdLoraConfig", "nblocks", 2),
        ("--runtime_config", '{"ephemeral_gpu_offload": true}', "LoraRuntimeConfig", "ephemeral_gpu_offload", True),
    ],
)  # fmt: skip
def test_nested_lora_settings_become_peft_objects(
    tiny_model_dir, flag, value, cls, field, expected
):
    from peft.tuners.lora import config as lora

    from tuning.models.peft import peft_config

    plan, problems = _plan(tiny_model_dir, "--target_modules", "q_proj", flag, value)
    assert not problems, problems.items
    built = getattr(peft_config(plan), flag.removeprefix("--"))
    assert isinstance(built, getattr(lora, cls)) and getattr(built, field) == expected


def test_a_wrong_key_in_a_nested_setting_names_the_flag(tiny_model_dir):
    from tuning.models.peft import peft_config

    plan, _ = _plan(tiny_model_dir, "--kasa_config", '{"betta": 1}')
    with pytest.raises(ConfigError, match=r"--kasa_config: .*betta.* \(peft KasaConfig\)"):
        peft_config(plan)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--eva_config", '{"rho": 2}'), r"--eva_config is not built in tuneforge yet \(EVA"),
        (("--loftq_config", '{"loftq_bits": 4}'), r"--loftq_config is not built .*bitsandbytes"),
        (("--use_qalora", "true"), r"--use_qalora is not built .*GPTQ"),
        (("--arrow_config", '{"top_k": 2}'), r"--arrow_config is not built .*several trained adapters"),
        (("--init_lora_weights", "eva"), r"--init_lora_weights eva is not built"),
    ],
)  # fmt: skip
def test_lora_features_not_built_are_refused_not_ignored(tiny_model_dir, flags, message):
    _, problems = _plan(tiny_model_dir, *flags)
    with pytest.raises(ConfigError, match=message):
        problems.raise_if_any()


def test_every_lora_config_field_of_the_installed_peft_has_a_flag():
    from peft import LoraConfig, PeftConfig

    base = {f.name for f in dataclasses.fields(PeftConfig)}
    fields = {f.name for f in dataclasses.fields(LoraConfig)} - base
    ours = {PEFT_FIELD.get(n, n) for n in (*LORA_ARGS, "alora_invocation_string")}
    assert fields - ours == set()
