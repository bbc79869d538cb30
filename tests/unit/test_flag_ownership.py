"""Every accepted flag has an owner: setting it changes the plan (and, for TrainingArguments,
reaches the trainer's arguments), or the plan refuses it with a message naming it.

Why: fms-hf-tuning silently ignores some flags (`--report_to tensorboard`, `--logging_steps 1`
with the epoch strategy, aim and mlflow settings...). A flag that is accepted and then does
nothing breaks our central promise; this test walks the whole flag surface so a new flag
without an owner fails here.
"""

from __future__ import annotations

import enum
from pathlib import Path

import pytest

from tuning.config.job import build_job_config
from tuning.config.parse import collect_values, convert_value
from tuning.config.schema import LEGACY_TRAINING_FLAGS, FlagSpec, all_flags
from tuning.errors import ConfigError
from tuning.plan import build_plan

REPO = Path(__file__).resolve().parents[2]
IO = REPO / "data_configs" / "data" / "input_output.jsonl"


def _probe(spec: FlagSpec) -> list[str]:
    """A value other than the default, as it would be typed."""
    default = spec.default
    if spec.kind == "bool":
        return ["false" if default else "true"]
    if spec.choices:
        return [str(next(c for c in spec.choices if c != default))]
    if spec.kind == "int":
        return [str(default + 1 if isinstance(default, int) else 3)]
    if spec.kind == "float":
        return [str(default * 2 + 0.25 if isinstance(default, float) else 0.25)]
    if spec.kind == "list":
        return ["2"] if spec.list_item == "int" else ["x"]
    if spec.kind == "json":
        return ['{"probe": 1}']
    if spec.kind == "padding_free":
        return ["huggingface"]
    return ["probe-value"]


def _slices(plan) -> tuple:
    return plan.data, plan.model, plan.train


def _plan(argv: list[str]):
    return build_plan(build_job_config(collect_values(argv, environ={})))


@pytest.fixture(scope="module")
def baseline(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ownership") / "out"
    (out / "checkpoint-3").mkdir(parents=True)  # something to resume, or not
    (out / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3}')
    argv = [
        "--model_name_or_path", str(tiny_model_dir), "--training_data_path", str(IO),
        "--output_dir", str(out),
    ]  # fmt: skip
    return argv, _slices(_plan(argv))


def _names(name: str) -> tuple[str, ...]:
    """How a refusal may name the flag: itself, its aliases, or what an older spelling maps to."""
    spec = all_flags()[name]
    target = LEGACY_TRAINING_FLAGS.get(name)
    return (name, *spec.aliases, *([target] if target else []))


def _sft_value(config, name: str):
    value = getattr(config, name)
    return value.value if isinstance(value, enum.Enum) else value


FLAGS = sorted(all_flags())


def test_the_flag_surface_is_walked_whole():
    assert len(FLAGS) > 150  # every fms flag and every TrainingArguments field


@pytest.mark.parametrize("name", FLAGS)
def test_every_flag_is_read_by_the_plan_or_refused(name, baseline):
    base_argv, base_slices = baseline
    spec = all_flags()[name]
    if name in ("model_name_or_path", "training_data_path", "output_dir"):
        argv = list(base_argv)
        argv[argv.index(f"--{name}") + 1] = "/nonexistent/probe"
    else:
        argv = [*base_argv, f"--{name}", *_probe(spec)]
    try:
        plan = _plan(argv)
    except ConfigError as exc:
        assert any(f"{n}" in str(exc) for n in _names(name)), f"refused without naming it: {exc}"
        return
    assert _slices(plan) != base_slices, f"--{name} is accepted but changes nothing"
    if spec.section == "hf" and name != "hub_token":  # the token goes to HF_TOKEN, not to disk
        # a TrainingArguments value must reach the trainer's arguments as given; a boolean both
        # ways, so a value tuneforge forces cannot hide behind a probe that happens to match it
        probes = [["true"], ["false"]] if spec.kind == "bool" else [_probe(spec)]
        for probe in probes:
            _reaches_the_trainer(spec, [*base_argv, f"--{name}", *probe], probe)


def _reaches_the_trainer(spec: FlagSpec, argv: list[str], probe: list[str]) -> None:
    from tuning.training.trainer import sft_config

    try:
        plan = _plan(argv)
    except ConfigError as exc:
        assert spec.name in str(exc)
        return
    expected = convert_value(spec, probe if spec.kind == "list" else probe[0])
    assert plan.train.arguments[spec.name] == expected
    try:
        config = sft_config(plan.train, 128)
    except ConfigError:
        return  # TrainingArguments itself rejects this value alone: not ignored either
    assert _sft_value(config, spec.name) == expected, f"--{spec.name} is overridden"
