"""One run at a time per output_dir: a lock file the main process holds while it runs.

`output_dir/.tuneforge.lock` is created atomically (O_CREAT|O_EXCL) and holds JSON
{host, pid, started}. A second run into the same output_dir is refused while the holder lives.
A lock left by a process that is gone (same host, pid not running) is taken over with one
warning. A lock from another host is respected while its holder keeps refreshing it (a
heartbeat every minute); one left by a killed pod (a retried pod has a new host name) is taken
over once it has not been refreshed for ten minutes.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tuning.errors import UserError

LOCK_NAME = ".tuneforge.lock"
# A lock file that is not valid JSON is being written right now, or was cut off by a crash
# between creating and writing it; after this many seconds it is treated as cut off.
UNREADABLE_GRACE_S = 30.0
# The holder touches its lock every HEARTBEAT_S; a lock from another host (a restarted pod has a
# new host name) untouched for STALE_AFTER_S is taken over: its holder is gone.
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0
_TAKEOVER_ATTEMPTS = 5
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock: host name, process id and when it was taken (ISO 8601, UTC)."""

    host: str
    pid: int
    started: str

    @classmethod
    def here(cls) -> LockInfo:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return cls(socket.gethostname(), os.getpid(), started)

    def to_bytes(self) -> bytes:
        record = {"host": self.host, "pid": self.pid, "started": self.started}
        return (json.dumps(record, sort_keys=True) + "\n").encode()

    def describe(self) -> str:
        return f"process {self.pid} on host '{self.host}' (started {self.started})"


def _parse(raw: bytes) -> LockInfo | None:
    try:
        record = json.loads(raw.decode())
        return LockInfo(str(record["host"]), int(record["pid"]), str(record["started"]))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, it is someone else's
        return True
    except OSError:
        return False
    return True


# Lock files this process holds (resolved paths): a lock naming this pid that is not among them
# was left by an earlier process that had the same pid (a restarted container).
_HELD: dict[Path, RunLock] = {}


class RunLock:
    """A held lock; release() (idempotent) removes the file if it is still this one."""

    def __init__(self, path: Path, info: LockInfo):
        self.path = path
        self.info = info
        self._raw = info.to_bytes()
        self.released = False
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="tuneforge-lock", daemon=True)
        self._beat.start()
        atexit.register(self.release)

    def _heartbeat(self) -> None:
        """Keep the lock's mtime fresh, so other hosts can tell a live run from a dead one."""
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._stop.set()
        _HELD.pop(self.path, None)
        atexit.unregister(self.release)
        try:
            if self.path.read_bytes() == self._raw:
                self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # never fail a finished run over its lock file
            logger.warning("Could not remove the run lock %s: %s", self.path, exc)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def release_all() -> None:
    """Release every lock this process holds: for exits that skip `finally` and atexit
    (os._exit after a second preemption signal)."""
    for held in list(_HELD.values()):
        held.release()


def _create(path: Path, info: LockInfo) -> bool:
    """Create the lock file holding `info`; False when one already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, info.to_bytes())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _stale_reason(path: Path, raw: bytes, holder: LockInfo | None, host: str) -> str | None:
    """Why the lock file in `raw` is stale (safe to take over), or None when it must stand."""
    if holder is None:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return "it is gone"
        if age > UNREADABLE_GRACE_S:
            return f"it is not a valid lock record ({raw[:60]!r}) and is {age:.0f}s old"
        return None
    if holder.host != host:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return "it is gone"
        if age > STALE_AFTER_S:
            return f"its holder on host '{holder.host}' stopped refreshing it {age:.0f}s ago"
        return None
    if holder.pid == os.getpid():
        return None if path in _HELD else "that pid is now this process"
    return None if _pid_alive(holder.pid) else "that process is no longer running"


def _refusal(output_dir: Path, path: Path, holder: LockInfo | None, host: str) -> UserError:
    if holder is None:
        return UserError(
            f"output_dir '{output_dir}' is locked by another tuneforge run that is starting "
            f"right now (its lock file {path} is being written). Wait for it to finish or "
            "choose another --output_dir."
        )
    if holder.host == host:
        return UserError(
            f"output_dir '{output_dir}' is in use by another tuneforge run: "
            f"{holder.describe()}. Wait for it to finish, stop it, or choose another "
            "--output_dir."
        )
    return UserError(
        f"output_dir '{output_dir}' is locked by a tuneforge run on another host: "
        f"{holder.describe()}, which refreshed the lock less than {STALE_AFTER_S:.0f}s ago. "
        f"Wait for it to end (a lock its holder stops refreshing is taken over after "
        f"{STALE_AFTER_S:.0f}s), or choose another --output_dir."
    )


def _take_over(path: Path, raw: bytes) -> None:
    """Move the stale lock file (exactly the bytes judged stale) out of the way. When the file
    changed in between (another run took it over first), put that one back."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    try:
        if aside.read_bytes() != raw:
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)  # restore the newer lock; never clobber a third one
    finally:
        aside.unlink(missing_ok=True)


def acquire(output_dir: str | os.PathLike[str]) -> RunLock:
    """Take the run lock of output_dir (created if missing); raise UserError while another run
    holds it."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = (out / LOCK_NAME).resolve()
    host = socket.gethostname()
    info = LockInfo.here()
    for _ in range(_TAKEOVER_ATTEMPTS):
        if _create(path, info):
            _HELD[path] = RunLock(path, info)
            return _HELD[path]
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            continue  # released between our attempt and the read: try again
        holder = _parse(raw)
        reason = _stale_reason(path, raw, holder, host)
        if reason is None:
            raise _refusal(out, path, holder, host)
        who = holder.describe() if holder else "an unknown process"
        logger.warning("Taking over the stale run lock %s left by %s: %s.", path, who, reason)
        _take_over(path, raw)
    raise UserError(
        f"Could not take the run lock {out / LOCK_NAME}: other runs keep taking it. Make sure "
        "only one run uses this --output_dir."
    )
