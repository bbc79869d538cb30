"""Bad input: exit 1 with one message naming the flag/file and the fix; internal failures 203."""

from __future__ import annotations

import json

import pytest


def _bad_inputs(data_dir, tmp_path):
    broken_json = tmp_path / "broken.jsonl"
    broken_json.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": \n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    io = str(data_dir / "input_output.jsonl")
    tweets = str(data_dir / "twitter_complaints.jsonl")
    both_cfg = tmp_path / "cfg.yaml"
    both_cfg.write_text("datasets:\n  - name: a\n    data_paths: [x.jsonl]\n")
    return {
        "unknown-flag": (["--training_data_path", io, "--learnin_rate", "1"], "Did you mean 'learning_rate'"),
        "no-model": (["--training_data_path", io, "NOMODEL"], "--model_name_or_path is required"),
        "no-data": ([], "--training_data_path"),
        "config-and-path": (["--training_data_path", io, "--data_config", str(both_cfg)], "both set"),
        "missing-file": (["--training_data_path", str(tmp_path / "nope.jsonl")], "nope.jsonl"),
        "bad-int": (["--training_data_path", io, "--num_train_epochs", "abc"], "num_train_epochs"),
        "bad-choice": (["--training_data_path", io, "--peft_method", "lorax"], "expected one of lora"),
        "formatter-no-template": (
            ["--training_data_path", io, "--data_formatter_template", "{{input}}"],
            "--response_template",
        ),
        "missing-column": (
            ["--training_data_path", tweets, "--dataset_text_field", "text", "--response_template", "x"],
            "text",
        ),
        "malformed-json": (["--training_data_path", str(broken_json)], "broken.jsonl"),
        "empty-file": (["--training_data_path", str(empty)], "empty.jsonl"),
        "unbuilt-plugin": (["--training_data_path", io, "--fast_moe", "8"], "--fast_moe"),
        "missing-model": (["--training_data_path", io, "--model_name_or_path", str(tmp_path / "m")], "does not exist"),
        "jinja-syntax": (
            ["--training_data_path", io, "--data_formatter_template", "{{ input ", "--response_template", "x"],
            "template",
        ),
        "exp-metadata": (["--training_data_path", io, "--exp_metadata", "not json"], "--exp_metadata"),
        "mxfp4-on-plain-model": (["--training_data_path", io, "--quantization_method", "mxfp4"], "not stored in MXFP4"),
        "eval-without-data": (["--training_data_path", io, "--eval_strategy", "steps"], "--validation_data_path"),
    }  # fmt: skip


CASES = [
    "unknown-flag", "no-model", "no-data", "config-and-path", "missing-file", "bad-int",
    "bad-choice", "formatter-no-template", "missing-column", "malformed-json", "empty-file",
    "unbuilt-plugin", "missing-model", "jinja-syntax", "exp-metadata", "eval-without-data",
    "mxfp4-on-plain-model",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_user_errors_exit_1_with_clear_message(case, run_tuner, data_dir, tmp_path, capsys):
    flags, expected = _bad_inputs(data_dir, tmp_path)[case]
    model = "NOMODEL" not in flags
    flags = [f for f in flags if f != "NOMODEL"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _ = run_tuner(*flags, output_dir=out, model=model)
    err = capsys.readouterr().err
    assert code == 1
    assert expected in err
    assert "Traceback" not in err
    assert expected in run_tuner.termination_log.read_text()
    assert (out / "keep.txt").read_text() == "precious"


def test_debug_log_level_shows_traceback(run_tuner, capsys):
    code, _ = run_tuner("--training_data_path", "x.jsonl", "--log_level", "debug", "--bogus", "1")
    assert code == 1
    assert "Traceback" in capsys.readouterr().err


def test_internal_error_exits_203(run_tuner, data_dir, monkeypatch, capsys):
    from tuning import sft_trainer

    def explode(plan):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sft_trainer, "execute", explode)
    code, _ = run_tuner("--training_data_path", str(data_dir / "input_output.jsonl"))
    assert code == 203
    assert "disk on fire" in run_tuner.termination_log.read_text()


def test_json_config_errors(run_tuner, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SFT_TRAINER_CONFIG_JSON_ENV_VAR", "%%%not-base64")
    assert run_tuner(model=False)[0] == 1
    assert "base64" in capsys.readouterr().err
    monkeypatch.delenv("SFT_TRAINER_CONFIG_JSON_ENV_VAR")
    monkeypatch.setenv("SFT_TRAINER_CONFIG_JSON_PATH", str(tmp_path / "missing.json"))
    assert run_tuner(model=False)[0] == 1
    assert "missing.json" in capsys.readouterr().err
    bad_key = tmp_path / "job.json"
    bad_key.write_text(json.dumps({"model_name_or_path": "m", "learning_rat": 1}))
    monkeypatch.setenv("SFT_TRAINER_CONFIG_JSON_PATH", str(bad_key))
    assert run_tuner(model=False)[0] == 1
    assert "Did you mean 'learning_rate'" in capsys.readouterr().err


def test_response_template_never_found_is_caught_before_loading(run_tuner, data_dir, capsys):
    code, _ = run_tuner(
        "--training_data_path", str(data_dir / "twitter_complaints.jsonl"),
        "--dataset_text_field", "output", "--response_template", "### Answer:",
    )  # fmt: skip
    assert code == 1
    assert "--response_template '### Answer:' does not occur" in capsys.readouterr().err


def test_rows_left_without_labels_are_counted_and_stop_the_run(
    run_tuner, fast_flags, tmp_path, capsys
):
    rows = [{"text": f"Q{i}\n### Answer: A{i}"} for i in range(5)]
    rows += [{"text": f"Q{i} with no answer marker"} for i in range(7)]
    path = tmp_path / "partly.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _ = run_tuner(
        "--training_data_path", str(path), "--dataset_text_field", "text",
        "--response_template", "\n### Answer:", *fast_flags,
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "7 of 12" in err and "with no answer marker" in err


def test_help_lists_flags_and_exits_0(capsys):
    from tuning import sft_trainer

    assert sft_trainer.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--model_name_or_path" in out and "--data_config_path, --data_config" in out


def test_flag_and_data_problems_are_reported_together(run_tuner, tmp_path, capsys):
    code, _ = run_tuner(
        "--training_data_path", str(tmp_path / "missing.jsonl"),
        "--exp_metadata", "not json", "--fast_moe", "8",
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "has 3 problems" in err
    assert "--exp_metadata" in err and "--fast_moe" in err and "missing.jsonl" in err


def test_debug_log_level_from_a_json_job_shows_traceback(run_tuner, tmp_path, monkeypatch, capsys):
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps({"training_data_path": str(tmp_path / "nope.jsonl"), "log_level": "debug"})
    )
    monkeypatch.setenv("SFT_TRAINER_CONFIG_JSON_PATH", str(job))
    code, _ = run_tuner()
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "nope.jsonl" in err
