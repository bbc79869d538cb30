"""tuneforge's entry point: load the job -> build the plan -> execute it.

Runs as `python tuning/sft_trainer.py`, `python -m tuning.sft_trainer` or under
`accelerate launch -m tuning.sft_trainer`. Exit codes: 0 success, 1 user error, 203 internal,
143 preempted (SIGTERM/SIGINT during training: checkpoint saved, rerun to resume).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tuning/sft_trainer.py`: import the package, not siblings
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import logging
import traceback
from collections.abc import Sequence

from tuning.config.job import JobConfig, build_job_config
from tuning.config.parse import collect_values
from tuning.errors import (
    INTERNAL_ERROR_EXIT_CODE,
    PREEMPTED_PREFIX,
    Preempted,
    TuneforgeError,
    UserError,
    write_termination_log,
)
from tuning.plan import build_plan
from tuning.run import execute

logger = logging.getLogger("tuning")


def load_job(argv: Sequence[str]) -> JobConfig:
    """Flags and/or a JSON/YAML job -> a JobConfig whose values have the right types."""
    return build_job_config(collect_values(argv))


def _configure_logging(job: JobConfig | None) -> None:
    level_name = (job.hf_training.get("log_level") if job else None) or "info"
    level = getattr(logging, str(level_name).upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tuning").setLevel(level)


def _debug(argv: Sequence[str], job: JobConfig | None) -> bool:
    """Tracebacks for user errors only with --log_level debug (flag or JSON key)."""
    if job is not None:
        return job.hf_training.get("log_level") == "debug"
    text = " ".join(argv)
    return "--log_level debug" in text or "--log_level=debug" in text


def _fail(exc: BaseException, code: int, show_traceback: bool) -> int:
    kind = "Error" if code == 1 else "Internal error"
    message = f"{kind}: {exc}"
    if show_traceback or code != 1:
        traceback.print_exception(exc)
    print(message, file=sys.stderr)
    write_termination_log(message)
    return code


def _preempted(exc: Preempted) -> int:
    """A clean stop after a checkpoint: no traceback, one line, the retryable exit code."""
    message = f"{PREEMPTED_PREFIX} {exc}"
    print(message, file=sys.stderr)
    write_termination_log(message)
    return exc.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        from tuning.config.help import print_help

        print_help()
        return 0
    job: JobConfig | None = None
    try:
        job = load_job(argv)
        _configure_logging(job)
        plan = build_plan(job)
        for notice in plan.notices:
            logger.warning(notice)
        execute(plan)
    except Preempted as exc:
        return _preempted(exc)
    except UserError as exc:
        return _fail(exc, exc.exit_code, _debug(argv, job))
    except TuneforgeError as exc:
        return _fail(exc, exc.exit_code, True)
    except KeyboardInterrupt:
        return _fail(RuntimeError("interrupted"), INTERNAL_ERROR_EXIT_CODE, False)
    except Exception as exc:  # anything we did not foresee is internal (203)
        return _fail(exc, INTERNAL_ERROR_EXIT_CODE, True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
