"""A run into an output_dir another live run holds is refused (exit 1, naming the holder); once
the holder is gone its stale lock is taken over and the run proceeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tuning.training.lock import LOCK_NAME

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HOLD = (
    "import sys, time\n"
    "from tuning.training.lock import acquire\n"
    "acquire(sys.argv[1])\n"
    "print('held', flush=True)\n"
    "time.sleep(120)\n"
)


def test_second_run_is_refused_while_the_holder_lives(
    run_tuner, fast_flags, data_dir, tmp_path, capsys, caplog
):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        flags = ("--training_data_path", str(data_dir / "input_output.jsonl"), *fast_flags)
        code, _ = run_tuner(*flags, output_dir=out)
        assert code == 1
        err = capsys.readouterr().err
        assert f"process {holder.pid}" in err
        assert "in use by another tuneforge run" in err
        assert f"process {holder.pid}" in run_tuner.termination_log.read_text()
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
        assert not (out / "tuneforge_config.json").exists()  # refused before anything ran
    finally:
        holder.kill()  # dies without releasing: its lock is left behind, stale
        holder.wait()
    assert (out / LOCK_NAME).exists()
    code, _ = run_tuner(*flags, output_dir=out)
    assert code == 0
    taken_over = [r.getMessage() for r in caplog.records if r.name == "tuning.training.lock"]
    assert len(taken_over) == 1
    assert "stale run lock" in taken_over[0]
    assert f"process {holder.pid}" in taken_over[0]
    assert (out / "run_summary.json").is_file()
    assert not (out / LOCK_NAME).exists()  # released at the end
