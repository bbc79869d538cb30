"""The output_dir run lock, and the resolved-config record that keeps earlier runs' records."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from tuning.errors import UserError
from tuning.run import RESOLVED_CONFIG_NAME, save_resolved_config
from tuning.training import lock
from tuning.training.lock import LOCK_NAME, acquire


def _write_lock(out, host: str, pid: int, started: str = "2026-01-02T03:04:05+00:00"):
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    path.write_text(json.dumps({"host": host, "pid": pid, "started": started}))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_take_creates_output_dir_and_records_holder_then_release_removes_it(tmp_path):
    out = tmp_path / "a" / "out"
    held = acquire(out)
    record = json.loads((out / LOCK_NAME).read_text())
    assert record["host"] == socket.gethostname()
    assert record["pid"] == os.getpid()
    started = datetime.fromisoformat(record["started"])
    assert abs((datetime.now(timezone.utc) - started).total_seconds()) < 60
    held.release()
    assert not (out / LOCK_NAME).exists()
    held.release()  # idempotent
    acquire(out).release()  # free again


def test_second_take_while_held_is_refused(tmp_path):
    with acquire(tmp_path), pytest.raises(UserError, match=f"process {os.getpid()}"):
        acquire(tmp_path)
    acquire(tmp_path).release()


def test_live_holder_on_this_host_is_refused_naming_host_pid_and_start(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = _write_lock(tmp_path, socket.gethostname(), holder.pid)
        with pytest.raises(UserError) as caught:
            acquire(tmp_path)
        message = str(caught.value)
        assert f"process {holder.pid}" in message
        assert socket.gethostname() in message
        assert "2026-01-02T03:04:05+00:00" in message
        assert json.loads(path.read_text())["pid"] == holder.pid  # untouched
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_dead_pid_is_taken_over_with_one_warning(tmp_path, caplog):
    dead = _dead_pid()
    _write_lock(tmp_path, socket.gethostname(), dead)
    with caplog.at_level(logging.WARNING, logger="tuning.training.lock"):
        held = acquire(tmp_path)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"process {dead}" in warnings[0].getMessage()
    assert "no longer running" in warnings[0].getMessage()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # no debris
    held.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_naming_this_pid_but_not_held_here_is_stale(tmp_path, caplog):
    """A restarted container can get the pid of the run that left the lock."""
    _write_lock(tmp_path, socket.gethostname(), os.getpid())
    with caplog.at_level(logging.WARNING, logger="tuning.training.lock"):
        acquire(tmp_path).release()
    assert "now this process" in caplog.text


def test_a_fresh_lock_from_another_host_is_refused_a_stale_one_taken_over(tmp_path, caplog):
    import os
    import time

    from tuning.training import lock as lock_module

    path = _write_lock(tmp_path, "some-other-host", _dead_pid())
    with pytest.raises(UserError) as caught:
        acquire(tmp_path)
    message = str(caught.value)
    assert "some-other-host" in message and "refreshed the lock less than 600s ago" in message
    assert path.exists()
    old = time.time() - lock_module.STALE_AFTER_S - 5  # a killed pod stopped refreshing it
    os.utime(path, (old, old))
    with caplog.at_level(logging.WARNING, logger="tuning.training.lock"):
        acquire(tmp_path).release()
    assert "stopped refreshing it" in caplog.text


def test_the_holder_keeps_its_lock_fresh(tmp_path, monkeypatch):
    import os
    import time

    from tuning.training import lock as lock_module

    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.05)
    held = acquire(tmp_path)
    old = time.time() - 1000
    os.utime(held.path, (old, old))
    time.sleep(0.3)
    assert time.time() - held.path.stat().st_mtime < 5
    held.release()


def test_unreadable_lock_is_refused_while_fresh_and_taken_over_when_old(tmp_path, caplog):
    path = tmp_path / LOCK_NAME
    path.write_text("")  # created, not yet written
    with pytest.raises(UserError, match="being written"):
        acquire(tmp_path)
    old = time.time() - lock.UNREADABLE_GRACE_S - 5
    os.utime(path, (old, old))
    with caplog.at_level(logging.WARNING, logger="tuning.training.lock"):
        acquire(tmp_path).release()
    assert "not a valid lock record" in caplog.text


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    held = acquire(tmp_path)
    other = _write_lock(tmp_path, "some-other-host", 1)
    held.release()
    assert other.exists()


def test_release_tolerates_a_removed_lock_file(tmp_path):
    held = acquire(tmp_path)
    (tmp_path / LOCK_NAME).unlink()
    held.release()
    acquire(tmp_path).release()


def test_release_all_releases_what_this_process_holds(tmp_path):
    first, second = acquire(tmp_path / "a"), acquire(tmp_path / "b")
    lock.release_all()
    assert first.released and second.released
    assert not list(tmp_path.glob(f"*/{LOCK_NAME}"))


def test_execute_releases_the_lock_when_the_run_fails(tmp_path, monkeypatch):
    from tuning import run

    monkeypatch.delenv("RANK", raising=False)

    def boom(plan):
        assert (tmp_path / "out" / LOCK_NAME).exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_execute_stages", boom)
    plan = SimpleNamespace(train=SimpleNamespace(output_dir=str(tmp_path / "out")))
    with pytest.raises(KeyboardInterrupt):
        run.execute(plan)
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_execute_on_other_ranks_takes_no_lock(tmp_path, monkeypatch):
    from tuning import run

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(run, "_execute_stages", lambda plan: None)
    _write_lock(tmp_path, "some-other-host", 1)
    run.execute(SimpleNamespace(train=SimpleNamespace(output_dir=str(tmp_path))))


# --- the resolved config record -------------------------------------------------------------


def _plan(out, **resolved):
    return SimpleNamespace(train=SimpleNamespace(output_dir=str(out)), resolved=resolved)


def test_resolved_config_keeps_an_earlier_different_record_by_its_mtime(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    save_resolved_config(_plan(tmp_path, max_steps=2))
    first = tmp_path / RESOLVED_CONFIG_NAME
    when = datetime(2026, 11, 30, 7, 15, 0, tzinfo=timezone.utc).timestamp()
    os.utime(first, (when, when))
    save_resolved_config(_plan(tmp_path, max_steps=4))
    kept = tmp_path / "tuneforge_config.20261130T071500Z.json"
    assert json.loads(kept.read_text()) == {"max_steps": 2}
    assert json.loads(first.read_text()) == {"max_steps": 4}
    # the same second again: numbered, nothing overwritten
    os.utime(first, (when, when))
    save_resolved_config(_plan(tmp_path, max_steps=6))
    again = tmp_path / "tuneforge_config.20261130T071500Z-1.json"
    assert json.loads(again.read_text()) == {"max_steps": 4}
    assert json.loads(kept.read_text()) == {"max_steps": 2}
    assert json.loads(first.read_text()) == {"max_steps": 6}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_resolved_config_identical_record_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    save_resolved_config(_plan(tmp_path, max_steps=2))
    first = tmp_path / RESOLVED_CONFIG_NAME
    os.utime(first, (1_000_000, 1_000_000))
    save_resolved_config(_plan(tmp_path, max_steps=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [RESOLVED_CONFIG_NAME]
    assert first.stat().st_mtime == 1_000_000


def test_resolved_config_only_on_the_main_process(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    save_resolved_config(_plan(tmp_path / "out", max_steps=2))
    assert not (tmp_path / "out").exists()
