"""Tests for tuning/plan.py: one plan per run, every cheap mistake found before data or weights.

Why: a misspelt tracker or a bad scheduler name used to cost the whole tokenization (minutes to
hours on real data) before it failed, and some flags were accepted and silently ignored. The
plan is the only place user-fixable problems are found; it imports nothing heavy and writes
nothing.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.cheap_mistakes import CASES
from tuning.config.job import build_job_config
from tuning.config.parse import collect_values
from tuning.errors import ConfigError
from tuning.plan import build_plan

REPO = Path(__file__).resolve().parents[2]
IO = REPO / "data_configs" / "data" / "input_output.jsonl"

# Runs every case through main() in ONE process, then reports which heavy modules got imported:
# if any case had imported torch, transformers or datasets, they would still be there.
_RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, os, sys, tempfile
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from tests.cheap_mistakes import CASES, argv_for
    from tuning import sft_trainer

    results = {{}}
    for case in CASES:
        tmp = Path(tempfile.mkdtemp())
        if case.setup:
            case.setup(tmp)
        out = tmp / "out"
        log = tmp / "termination-log"
        os.environ["TERMINATION_LOG_FILE"] = str(log)
        values = dict(model={model!r}, io={io!r}, data={data!r}, out=str(out), tmp=str(tmp))
        before = sorted(p.name for p in tmp.iterdir())
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = sft_trainer.main(argv_for(case, values))
        results[case.id] = dict(
            code=code,
            stderr=err.getvalue(),
            log=log.read_text() if log.exists() else "",
            out_exists=out.exists(),
            tmp_after=sorted(p.name for p in tmp.iterdir() if p.name != "termination-log"),
            tmp_before=before,
        )
    heavy = sorted({{"torch", "transformers", "datasets"}} & set(sys.modules))
    print(json.dumps(dict(results=results, heavy=heavy)))
    """
)


@pytest.fixture(scope="module")
def mistakes(tiny_model_dir) -> dict:
    code = _RUNNER.format(
        repo=str(REPO),
        model=str(tiny_model_dir),
        io=str(IO),
        data=str(REPO / "data_configs" / "data"),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFT_TRAINER_CONFIG")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_there_are_at_least_25_cheap_mistakes():
    assert len({case.id for case in CASES}) == len(CASES) >= 25


def test_no_mistake_imports_torch_transformers_or_datasets(mistakes):
    assert mistakes["heavy"] == []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cheap_mistake_fails_at_plan_time(mistakes, case):
    import re

    found = mistakes["results"][case.id]
    assert found["code"] == 1, found["stderr"][-2000:]
    message = found["stderr"].strip().splitlines()[-1]
    assert message.startswith("Error: "), message
    assert re.search(case.match, message, re.DOTALL), message
    assert "Traceback" not in found["stderr"]
    assert message in found["log"]  # appended to the termination log
    assert not found["out_exists"]  # output_dir untouched: nothing created, nothing written
    assert found["tmp_after"] == found["tmp_before"]


# ---------------------------------------------------------------------------------------------
# the plan itself


def _plan(*flags: str, environ: dict | None = None):
    values = collect_values(list(flags), environ=environ or {})
    return build_plan(build_job_config(values))


def _base(tiny_model_dir, out) -> list[str]:
    return [
        "--model_name_or_path", str(tiny_model_dir), "--training_data_path", str(IO),
        "--output_dir", str(out),
    ]  # fmt: skip


def test_several_problems_in_one_message(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError) as info:
        _plan(
            *_base(tiny_model_dir, tmp_path / "o"),
            "--trackers", "wandbx", "--lr_scheduler_type", "cosine",
            "--learning_rate", "-1", "--per_device_train_batch_size", "0",
        )  # fmt: skip
    text = str(info.value)
    assert text.startswith("The job has 3 problems: (1) ")
    assert (
        "wandbx" in text and "--learning_rate" in text and "--per_device_train_batch_size" in text
    )


def test_step_count_switches_a_default_strategy_with_one_notice(tiny_model_dir, tmp_path):
    plan = _plan(
        *_base(tiny_model_dir, tmp_path / "o"), "--logging_steps", "1", "--save_steps", "5"
    )
    assert plan.train.arguments["logging_strategy"] == "steps"
    assert plan.train.arguments["save_strategy"] == "steps"
    assert plan.train.arguments["eval_strategy"] == "no"
    notices = [n for n in plan.notices if "--logging_steps" in n]
    assert len(notices) == 1 and "--logging_strategy" in notices[0]
    kept = _plan(
        *_base(tiny_model_dir, tmp_path / "o"),
        "--logging_steps",
        "1",
        "--logging_strategy",
        "epoch",
    )
    assert kept.train.arguments["logging_strategy"] == "epoch"  # said explicitly: kept
    assert not [n for n in kept.notices if "--logging_steps" in n]


def test_eval_steps_without_eval_data_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(
        ConfigError, match=r"--eval_steps 5.0 \(so --eval_strategy steps\) needs evaluation data"
    ):
        _plan(*_base(tiny_model_dir, tmp_path / "o"), "--eval_steps", "5")


def _pretend_installed(monkeypatch, *distributions: str) -> None:
    """Trackers' packages as if `pip install 'tuneforge[...]'` had run (version 99)."""
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "99.0" if name in distributions else real(name),
    )


def test_report_to_and_trackers_are_one_registry(tiny_model_dir, tmp_path, monkeypatch):
    _pretend_installed(monkeypatch, "tensorboard", "wandb", "mlflow")
    plan = _plan(
        *_base(tiny_model_dir, tmp_path / "o"),
        "--report_to", "tensorboard", "wandb", "--logging_dir", str(tmp_path / "tb"),
    )  # fmt: skip
    assert [t.name for t in plan.train.trackers] == ["file_logger", "tensorboard", "wandb"]
    assert plan.train.arguments["report_to"] == ["tensorboard", "wandb"]
    assert plan.train.trackers[1].settings == {"logging_dir": str(tmp_path / "tb")}
    plan = _plan(
        *_base(tiny_model_dir, tmp_path / "o"),
        "--trackers", "mlflow", "--mlflow_tracking_uri", "file:///tmp/ml", "--experiment", "e1",
    )  # fmt: skip
    (mlflow,) = plan.train.trackers
    assert mlflow.settings == {"mlflow_tracking_uri": "file:///tmp/ml", "mlflow_experiment": "e1"}
    assert plan.train.arguments["report_to"] == ["mlflow"]
    assert plan.train.arguments["run_name"] == "e1"
    none = _plan(*_base(tiny_model_dir, tmp_path / "o"), "--trackers", "none")
    assert none.train.trackers == () and none.train.arguments["report_to"] == ["none"]
    with pytest.raises(ConfigError, match="--trackers mlflow needs --mlflow_tracking_uri"):
        _plan(*_base(tiny_model_dir, tmp_path / "o"), "--trackers", "mlflow")


def test_aim_settings_resolve_to_one_repo(tiny_model_dir, tmp_path, monkeypatch):
    _pretend_installed(monkeypatch, "aim")
    plan = _plan(
        *_base(tiny_model_dir, tmp_path / "o"), "--trackers", "aim",
        "--aim_remote_server_ip", "10.0.0.1", "--aim_remote_server_port", "53800",
        "--experiment", "exp", "--run_uri_export_path", str(tmp_path / "uri"),
    )  # fmt: skip
    aim = plan.train.trackers[0]
    assert aim.settings["repo"] == "aim://10.0.0.1:53800"
    assert aim.settings["experiment"] == "exp"
    assert aim.settings["export_dir"] == str(tmp_path / "uri")
    with pytest.raises(ConfigError, match="keep one"):
        _plan(
            *_base(tiny_model_dir, tmp_path / "o"), "--trackers", "aim",
            "--aim_repo", str(tmp_path / "a"), "--aim_url", "aim://h:1",
        )  # fmt: skip


def test_resume_target_is_resolved_at_plan_time(tiny_model_dir, tmp_path):
    out = tmp_path / "o"
    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (6, '{"glob')):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    plan = _plan(*_base(tiny_model_dir, out))
    assert plan.train.resume_from == str(out / "checkpoint-4")  # the cut-off save is skipped
    fresh = _plan(*_base(tiny_model_dir, out), "--resume_from_checkpoint", "false")
    assert fresh.train.resume_from is None
    overwrite = _plan(*_base(tiny_model_dir, out), "--overwrite_output_dir", "true")
    assert overwrite.train.resume_from is None
    assert any("--overwrite_output_dir" in n for n in overwrite.notices)


def test_peft_slice_keeps_only_the_methods_arguments(tiny_model_dir, tmp_path):
    plan = _plan(
        *_base(tiny_model_dir, tmp_path / "o"),
        "--peft_method", "lora", "--r", "4", "--target_modules", "q_proj", "v_proj",
    )  # fmt: skip
    assert plan.model.peft_arguments["r"] == 4
    assert plan.model.peft_arguments["target_modules"] == ["q_proj", "v_proj"]
    assert "num_virtual_tokens" not in plan.model.peft_arguments
    assert _plan(*_base(tiny_model_dir, tmp_path / "o")).model.peft_arguments == {}


def _round_trip(plan, path: Path):
    """Feed the saved resolved config back as a job file."""
    if path.suffix == ".json":
        path.write_text(json.dumps(dict(plan.resolved)))
    else:
        path.write_text(yaml.safe_dump(dict(plan.resolved)))
    return _plan(environ={"SFT_TRAINER_CONFIG_JSON_PATH": str(path)})


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_saved_config_fed_back_plans_to_the_same_plan(tiny_model_dir, tmp_path, suffix):
    flags = [
        *_base(tiny_model_dir, tmp_path / "o"),
        "--logging_steps", "1", "--peft_method", "lora", "--r", "4",
        "--tokenizer_name_or_path", str(tiny_model_dir), "--num_train_epochs", "2",
        "--lr_scheduler_type", "cosine", "--trackers", "file_logger",
        "--validation_data_path", str(IO), "--eval_strategy", "epoch",
    ]  # fmt: skip
    first = _plan(*flags)
    again = _round_trip(first, tmp_path / f"resolved{suffix}")
    assert (again.data, again.model, again.train) == (first.data, first.model, first.train)
    assert again.resolved == first.resolved


def test_redaction_hides_credentials_and_keeps_settings(tiny_model_dir, tmp_path, monkeypatch):
    _pretend_installed(monkeypatch, "mlflow")
    plan = _plan(
        *_base(tiny_model_dir, tmp_path / "o"),
        "--tokenizer_name_or_path", str(tiny_model_dir), "--hub_token", "hf_SECRET",
        "--include_num_input_tokens_seen", "true", "--trackers", "mlflow",
        "--mlflow_tracking_uri", "https://me:pa55@ml.example/?token=abc&x=1",
    )  # fmt: skip
    saved = plan.resolved
    assert saved["hub_token"] == "***"
    assert saved["tokenizer_name_or_path"] == str(tiny_model_dir)
    assert saved["include_num_input_tokens_seen"] == "true"
    assert saved["num_virtual_tokens"] == 8
    assert saved["mlflow_tracking_uri"] == "https://me:***@ml.example/?token=***&x=1"
    assert "hf_SECRET" not in json.dumps(dict(saved)) and "pa55" not in json.dumps(dict(saved))


def test_yaml_job_is_as_strict_as_json(tiny_model_dir, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        f"model_name_or_path: {tiny_model_dir}\ntraining_data_path: {IO}\n"
        f"output_dir: {tmp_path / 'o'}\ntarget_modules: [q_proj]\npeft_method: lora\n"
    )
    plan = _plan(environ={"SFT_TRAINER_CONFIG_JSON_PATH": str(job)})
    assert plan.model.peft_arguments["target_modules"] == ["q_proj"]
    job.write_text(f"model_name_or_path: {tiny_model_dir}\nlearnin_rate: 1\n")
    with pytest.raises(ConfigError, match=r"YAML config file .*Did you mean 'learning_rate'"):
        _plan(environ={"SFT_TRAINER_CONFIG_JSON_PATH": str(job)})
    job.write_text("model_name_or_path: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        _plan(environ={"SFT_TRAINER_CONFIG_JSON_PATH": str(job)})


def test_base64_job_still_wins(tiny_model_dir, tmp_path):
    text = json.dumps({"model_name_or_path": str(tiny_model_dir), "training_data_path": str(IO)})
    environ = {
        "SFT_TRAINER_CONFIG_JSON_ENV_VAR": base64.b64encode(text.encode()).decode(),
        "SFT_TRAINER_CONFIG_JSON_PATH": str(tmp_path / "ignored.yaml"),
    }
    plan = _plan("--output_dir", str(tmp_path / "o"), environ=environ)
    assert plan.model.model_name_or_path == str(tiny_model_dir)
