"""Error types, exit codes and the termination log.

A user mistake (bad flag, missing file, malformed data) is a `UserError` and exits 1; anything
else is internal and exits 203, as fms-hf-tuning's launcher expects.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path

USER_ERROR_EXIT_CODE = 1
INTERNAL_ERROR_EXIT_CODE = 203
# 128 + SIGTERM: the run was preempted, saved a checkpoint and stopped. Retryable for
# Kubernetes/PyTorchJob (restartPolicy ExitCode); a rerun resumes from that checkpoint.
PREEMPTED_EXIT_CODE = 143
PREEMPTED_PREFIX = "Preempted:"  # how its termination log lines start
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


class TuneforgeError(Exception):
    """Base class for errors tuneforge raises on purpose."""

    exit_code = INTERNAL_ERROR_EXIT_CODE


class UserError(TuneforgeError):
    """Something the user can fix: the message names the flag/file/field and the fix."""

    exit_code = USER_ERROR_EXIT_CODE


class ConfigError(UserError):
    """A flag, JSON key or data-config field is wrong."""


class DataError(UserError):
    """The data itself cannot give what the config asks for (missing columns, no labels...)."""


class InternalError(TuneforgeError):
    """A bug or an environment failure we did not expect."""


class Preempted(TuneforgeError):
    """SIGTERM/SIGINT stopped training after a checkpoint; not a failure of the job."""

    exit_code = PREEMPTED_EXIT_CODE


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest candidate, or '' when none is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean '{matches[0]}'?" if matches else ""


def termination_log_path() -> Path | None:
    """The file Kubernetes reads a failed pod's reason from, when there is one."""
    configured = os.environ.get("TERMINATION_LOG_FILE")
    if configured:
        return Path(configured)
    default = Path(DEFAULT_TERMINATION_LOG)
    return default if default.exists() else None


def write_termination_log(message: str) -> None:
    """Append the message to the termination log; never raise from here."""
    path = termination_log_path()
    if path is None:
        return
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(message.rstrip() + "\n")
    except OSError:
        pass
