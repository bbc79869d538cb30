"""SIGTERM/SIGINT during training: finish the step, checkpoint, exit 143; the rerun resumes."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "build" / "accelerate_launch.py"


# --- the callback and the handlers, without training ------------------------------------------


def _step_end(callback, step: int):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    state = TrainerState()
    state.global_step = step
    control = TrainerControl()
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    return callback.on_step_end(args, state, control) or control


def test_flag_up_saves_and_stops_at_the_next_step_end():
    from tuning.training.preemption import PreemptionCallback, PreemptionGuard

    guard = PreemptionGuard()
    callback = PreemptionCallback(guard)
    control = _step_end(callback, 4)
    assert not control.should_save and not control.should_training_stop
    assert callback.stopped_at is None
    guard.handle(signal.SIGTERM)  # what the installed handler does on the first signal
    control = _step_end(callback, 5)
    assert control.should_save and control.should_training_stop
    assert callback.stopped_at == 5
    assert guard.signum == signal.SIGTERM


def test_second_signal_exits_at_once_with_143(monkeypatch, tmp_path):
    from tuning.training import preemption

    log = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_LOG_FILE", str(log))
    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(preemption.os, "_exit", fake_exit)
    from tuning.training.lock import acquire

    held = acquire(tmp_path / "out")  # os._exit skips finally: the lock must be freed first
    guard = preemption.PreemptionGuard()
    guard.handle(signal.SIGINT)
    assert exits == []
    with pytest.raises(SystemExit):
        guard.handle(signal.SIGINT)
    assert exits == [143]
    assert held.released and not held.path.exists()
    assert log.read_text().startswith("Preempted: a second SIGINT stopped training at once")


def test_handlers_are_installed_for_training_only_and_restored():
    from tuning.training.preemption import PreemptionGuard

    def previous(signum, frame):  # pragma: no cover - replaced while the guard is active
        raise AssertionError("the guard's handler should have run")

    old_term = signal.signal(signal.SIGTERM, previous)
    try:
        with PreemptionGuard() as guard:
            assert signal.getsignal(signal.SIGTERM) == guard.handle
            assert signal.getsignal(signal.SIGINT) == guard.handle
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs between bytecodes of the main thread
                if guard.requested:
                    break
                time.sleep(0.01)
            assert guard.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is previous
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, old_term)


def _rank(store: str, rank: int, results) -> None:
    import torch.distributed as dist

    from tuning.training.preemption import agreed_flag

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    local = rank == 1  # only rank 1 got the signal so far
    results.put((rank, agreed_flag(local), agreed_flag(False)))
    dist.destroy_process_group()


def test_ranks_agree_on_the_flag(tmp_path):
    """Two gloo processes: the flag of one rank stops both at the same step end. Forked, so the
    ranks start without importing torch and transformers again."""
    import multiprocessing

    import tuning.training.preemption  # noqa: F401  (imported once, before the fork)

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    store = str(tmp_path / "store")
    procs = [context.Process(target=_rank, args=(store, rank, results)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    try:
        found = sorted(results.get(timeout=60) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert found == [(0, True, False), (1, True, False)]
    assert [proc.exitcode for proc in procs] == [0, 0]


def _load_launcher():
    spec = importlib.util.spec_from_file_location("accelerate_launch_for_preemption", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launcher_passes_143_through_when_a_rank_was_preempted():
    launcher = _load_launcher()
    text = (
        "Preempted: preempted at step 7 (SIGTERM), checkpoint saved at /o/checkpoint-7\n"
        "Preempted: preempted at step 7 (SIGTERM), checkpoint saved at /o/checkpoint-7\n"
    )
    messages = launcher.child_messages(text)
    assert messages == [text.splitlines()[0]]
    assert launcher.exit_code_for(1, messages) == 143
    assert launcher.exit_code_for(1, ["Internal error: gloo closed", *messages]) == 143
    assert launcher.exit_code_for(1, ["Error: bad data", *messages]) == 1
    assert launcher.exit_code_for(0, messages) == 0


# --- a real run, a real SIGTERM, then the rerun ------------------------------------------------


def _command(model: Path, data: Path, out: Path, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "tuning.sft_trainer",
        "--model_name_or_path", str(model),
        "--training_data_path", str(data / "input_output.jsonl"),
        "--output_dir", str(out),
        "--torch_dtype", "float32", "--use_cpu", "true", "--per_device_train_batch_size", "2",
        "--max_steps", str(steps), "--save_strategy", "steps", "--save_steps", "1000",
        "--logging_strategy", "steps", "--logging_steps", "1", "--max_seq_length", "64",
    ]  # fmt: skip


def _logged_steps(out: Path) -> list[int]:
    path = out / "training_logs.jsonl"
    if not path.exists():
        return []
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    return [json.loads(x)["data"]["step"] for x in lines if x.endswith("}")]


def test_sigterm_checkpoints_exits_143_and_the_rerun_resumes(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    log = tmp_path / "termination-log"
    env = {**os.environ, "TERMINATION_LOG_FILE": str(log), "PYTHONPATH": str(REPO)}
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "w") as err:
        proc = subprocess.Popen(
            _command(tiny_model_dir, data_dir, out, 1000),
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while len(_logged_steps(out)) < 3:
                assert proc.poll() is None, stderr.read_text()[-3000:]
                assert time.monotonic() < deadline, "training did not log 3 steps in 60 s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 143, stderr.read_text()[-3000:]
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1, checkpoints
    step = int(checkpoints[0].name.split("-")[1])
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert state["global_step"] == step
    assert (checkpoints[0] / "model.safetensors").is_file()
    assert (checkpoints[0] / "optimizer.pt").is_file()
    assert 3 <= step < 1000
    assert _logged_steps(out) == list(range(1, step + 1))  # stopped right after step N's log
    assert not (out / "run_summary.json").exists()  # a preempted run is not finished
    lines = log.read_text().splitlines()
    assert lines == [
        f"Preempted: preempted at step {step} (SIGTERM), checkpoint saved at "
        f"{out / f'checkpoint-{step}'}; rerun the same job to resume from it."
    ]

    rerun = subprocess.run(
        _command(tiny_model_dir, data_dir, out, step + 3),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["resumed_from"] == str(out / f"checkpoint-{step}")
    assert summary["global_step"] == step + 3
    assert _logged_steps(out) == list(range(1, step + 4))  # no step lost or repeated
