"""The JSON job forms and the three ways to launch."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _job(tiny_model_dir, data_dir, out) -> dict:
    return {
        "model_name_or_path": str(tiny_model_dir),
        "training_data_path": str(data_dir / "twitter_complaints.jsonl"),
        "dataset_text_field": "output",
        "response_template": "\n### Response:",
        "output_dir": str(out),
        "torch_dtype": "float32",
        "use_cpu": True,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "logging_strategy": "steps",
        "logging_steps": 1,
        "save_strategy": "no",
        "max_seq_length": 128,
        "target_modules": ["q_proj", "v_proj"],
        "peft_method": "lora",
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
        "warmup_ratio": 0.1,
    }


def _steps(out) -> list[int]:
    lines = (out / "training_logs.jsonl").read_text().splitlines()
    return [json.loads(line)["data"]["step"] for line in lines]


def test_json_config_path(run_tuner, tiny_model_dir, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "json-path"
    path = tmp_path / "job.json"
    job = {**_job(tiny_model_dir, data_dir, out), "hub_token": "hf_SECRET"}
    job.update(save_strategy="steps", save_steps=2, save_model_dir=str(out / "final"))
    path.write_text(json.dumps(job))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("SFT_TRAINER_CONFIG_JSON_PATH", str(path))
    assert run_tuner(model=False, output_dir=out)[0] == 0
    assert _steps(out) == [1, 2]
    saved = json.loads((out / "tuneforge_config.json").read_text())
    assert saved["peft_method"] == "lora" and saved["response_template"] == "\n### Response:"
    assert saved["hub_token"] == "***"
    assert not [p for p in out.rglob("*") if p.is_file() and b"hf_SECRET" in p.read_bytes()]


def test_json_config_base64_env(run_tuner, tiny_model_dir, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "json-b64"
    job = _job(tiny_model_dir, data_dir, out)
    encoded = base64.b64encode(json.dumps(job).encode()).decode()
    monkeypatch.setenv("SFT_TRAINER_CONFIG_JSON_ENV_VAR", encoded)
    monkeypatch.setenv("SFT_TRAINER_CONFIG_JSON_PATH", str(tmp_path / "ignored.json"))
    assert run_tuner(model=False, output_dir=out)[0] == 0
    assert _steps(out) == [1, 2]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("SFT_TRAINER_CONFIG_JSON_ENV_VAR", None)
    env.pop("SFT_TRAINER_CONFIG_JSON_PATH", None)
    return env


def _flags(tiny_model_dir, data_dir, out) -> list[str]:
    job = _job(tiny_model_dir, data_dir, out)
    job["lr_scheduler_kwargs"] = json.dumps(job["lr_scheduler_kwargs"])
    job["response_template"] = "\\n### Response:"
    flags = []
    for key, value in job.items():
        flags.append(f"--{key}")
        flags.extend(value if isinstance(value, list) else [str(value)])
    return flags


@pytest.mark.parametrize(
    "launcher",
    [
        pytest.param([sys.executable, "tuning/sft_trainer.py"], id="script"),
        pytest.param([sys.executable, "-m", "tuning.sft_trainer"], id="module"),
        pytest.param(
            # two real processes (torchrun): port 0 lets accelerate pick a free one
            [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
             "fixtures/cpu_2proc.yaml", "--main_process_port", "0", "-m", "tuning.sft_trainer"],
            id="accelerate-2proc",
        ),
    ],
)  # fmt: skip
def test_three_ways_to_launch(launcher, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [*launcher, *_flags(tiny_model_dir, data_dir, out)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert _steps(out) == [1, 2]  # written once, by the main process only


def test_subprocess_user_error_exit_code(tmp_path):
    log = tmp_path / "termination-log"
    result = subprocess.run(
        [sys.executable, "-m", "tuning.sft_trainer", "--model_name_or_path", "m", "--learnin_rate", "1"],
        cwd=REPO, env=dict(_env(), TERMINATION_LOG_FILE=str(log)), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Did you mean 'learning_rate'" in log.read_text()
    assert "Traceback" not in result.stderr
