"""build/accelerate_launch.py driven as the container runs it: a subprocess with the job in the
environment, real `accelerate launch`, real training processes on the tiny model (CPU).

Why: the exit code and the termination log are what Kubernetes and job controllers read; torchrun
and accelerate hide the children's codes, so only a real launch proves the launcher tells a user
error (1) from a crash (203), on any rank, and marks success (.complete) only on success.
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "build" / "accelerate_launch.py"

# Loaded through PYTHONPATH into every Python process of a launch: records each start (so a test
# can count the training processes) and, when asked, makes rank 1 fail in tuning.run.execute.
SITECUSTOMIZE = """
import os, sys
with open(os.environ["TEST_STARTS_FILE"], "a") as f:
    f.write(repr((os.environ.get("RANK"), sys.orig_argv)) + "\\n")
if os.environ.get("RANK") == "1" and os.environ.get("TEST_FAIL_RANK_1"):
    import tuning.run
    from tuning.errors import DataError

    def _fail(plan):
        if os.environ["TEST_FAIL_RANK_1"] == "user":
            raise DataError("simulated bad data seen on rank 1")
        raise RuntimeError("simulated crash on rank 1")

    tuning.run.execute = _fail
"""


def _job(tiny_model_dir, data_dir, out: Path, **extra) -> dict:
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
        **extra,
    }


class Launch:
    """One launcher run: its exit code, output, wall time and the processes it started."""

    def __init__(self, tmp_path: Path, job: dict, *, base64_form: bool = False, **env: str):
        self.log = tmp_path / "termination-log"
        self.log.write_text("earlier line\n")  # appended to, never replaced
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.starts_file = tmp_path / "starts"
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SFT_TRAINER_CONFIG") and k not in ("RANK", "WORLD_SIZE")
        }
        environ.update(
            HF_HUB_OFFLINE="1",
            PYTHONPATH=os.pathsep.join([str(site), str(REPO)]),
            TERMINATION_LOG_FILE=str(self.log),
            TEST_STARTS_FILE=str(self.starts_file),
            CUDA_VISIBLE_DEVICES="",
            **env,
        )
        if base64_form:
            encoded = base64.b64encode(json.dumps(job).encode()).decode()
            environ["SFT_TRAINER_CONFIG_JSON_ENV_VAR"] = encoded
            environ["SFT_TRAINER_CONFIG_JSON_PATH"] = str(tmp_path / "ignored.json")
        else:
            path = tmp_path / "job.json"
            path.write_text(json.dumps(job))
            environ["SFT_TRAINER_CONFIG_JSON_PATH"] = str(path)
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, str(LAUNCHER)],
            cwd=REPO, env=environ, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        self.seconds = time.monotonic() - started
        self.code = result.returncode
        self.stderr = result.stderr

    def termination_log(self) -> str:
        return self.log.read_text()

    def trainer_ranks(self) -> list[str | None]:
        """RANK of every training process started (the trainer module on its command line)."""
        if not self.starts_file.exists():
            return []
        starts = [ast.literal_eval(line) for line in self.starts_file.read_text().splitlines()]
        return sorted(rank or "0" for rank, argv in starts if _runs_trainer(argv))


def _runs_trainer(argv: list[str]) -> bool:
    """`python [-u] -m tuning.sft_trainer`, not accelerate's own process that names it."""
    return "-m" in argv and argv[argv.index("-m") + 1 :][:1] == ["tuning.sft_trainer"]


def _steps(out: Path) -> list[int]:
    lines = (out / "training_logs.jsonl").read_text().splitlines()
    return [json.loads(line)["data"]["step"] for line in lines]


def test_json_path_job_trains_marks_complete_and_post_processes_for_vllm(
    tiny_model_dir, data_dir, tmp_path
):
    """The trainer refuses the launcher keys, so success also proves its copy of the job has
    none of them."""
    out = tmp_path / "out"
    job = _job(
        tiny_model_dir, data_dir, out,
        peft_method="lora", target_modules=["q_proj", "v_proj"],
        add_special_tokens=["<|tool|>", "<|end_tool|>"], save_model_dir=str(out / "final"),
        accelerate_launch_args={}, lora_post_process_for_vllm=True,
    )  # fmt: skip
    run = Launch(tmp_path, job)
    assert run.code == 0, run.stderr[-3000:]
    assert (out / ".complete").is_file()
    assert _steps(out) == [1, 2]
    assert run.trainer_ranks() == ["0"]
    assert run.termination_log() == "earlier line\n"
    from safetensors import safe_open

    with safe_open(str(out / "final" / "new_embeddings.safetensors"), "pt") as new:
        shapes = {k: new.get_slice(k).get_shape() for k in new.keys()}  # noqa: SIM118
    assert shapes == {"input_embeddings": [2, 64], "output_embeddings": [2, 64]}
    with safe_open(str(out / "final" / "adapter_model.safetensors"), "pt") as adapter:
        assert all("lora_" in key for key in adapter.keys())  # noqa: SIM118


def test_user_error_exits_1_fast_without_starting_training(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    job = _job(tiny_model_dir, data_dir, out, trackers=["tensorbord"])
    run = Launch(tmp_path, job)
    assert run.code == 1
    assert run.seconds < 5, run.seconds  # planning only: no torch, no accelerate
    log = run.termination_log().splitlines()
    assert log[0] == "earlier line"
    assert log[1].startswith("Error: ") and "Did you mean 'tensorboard'" in log[1]
    assert run.trainer_ranks() == []
    assert len(run.starts_file.read_text().splitlines()) == 1  # the launcher, nothing else
    assert not out.exists()


@pytest.mark.parametrize(
    ("failure", "code", "message"),
    [
        ("internal", 203, "Internal error: simulated crash on rank 1"),
        ("user", 1, "Error: simulated bad data seen on rank 1"),
    ],
)
def test_failure_on_rank_1_of_2_sets_the_exit_code(
    failure, code, message, tiny_model_dir, data_dir, tmp_path
):
    """accelerate exits 1 whatever happened; the children's termination log decides. The job
    comes base64-encoded with its launcher keys: had a trainer read that original instead of
    the launcher's copy, both ranks would refuse it as a user error (exit 1, never 203)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".complete").touch()  # left by an earlier run: must not mark this one
    job = _job(
        tiny_model_dir,
        data_dir,
        out,
        accelerate_launch_args={"num_processes": 2, "multi_gpu": True},
    )
    run = Launch(tmp_path, job, base64_form=True, TEST_FAIL_RANK_1=failure)
    assert run.code == code, run.stderr[-3000:]
    assert run.trainer_ranks() == ["0", "1"]  # torchrun really started two processes
    assert message in run.termination_log().splitlines()
    assert run.termination_log().startswith("earlier line\n")
    assert not (out / ".complete").exists()


def test_pytorchjob_environment_becomes_accelerate_arguments(tmp_path):
    """Unit-level (no processes): what a worker pod of a 2 x 4-GPU PyTorchJob launches with;
    several GPUs and no config_file get fms-hf-tuning's FSDP defaults."""
    spec = importlib.util.spec_from_file_location("accelerate_launch", LAUNCHER)
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    environ = {
        "MASTER_ADDR": "tuneforge-sft-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "2",
        "RANK": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3",
    }  # fmt: skip
    argv, _ = launcher.accelerate_argv({"mixed_precision": "bf16"}, environ, tmp_path)
    assert argv == [
        "--mixed_precision", "bf16", "--num_machines", "2", "--machine_rank", "1",
        "--main_process_ip", "tuneforge-sft-master-0", "--main_process_port", "23456",
        "--num_processes", "8",
        "--config_file", str(REPO / "fixtures" / "accelerate_fsdp_defaults.yaml"),
        "--module", "tuning.sft_trainer",
    ]  # fmt: skip
