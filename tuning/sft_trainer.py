"""tuneforge's entry point: parse -> validate -> preflight -> train -> save.

Runs as `python tuning/sft_trainer.py`, `python -m tuning.sft_trainer` or under
`accelerate launch -m tuning.sft_trainer`. Exit codes: 0 success, 1 user error, 203 internal.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tuning/sft_trainer.py`: import the package, not siblings
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import json
import logging
import os
import traceback
from collections.abc import Sequence

from tuning.config.job import JobConfig, build_job_config, cross_checks
from tuning.config.parse import collect_values
from tuning.errors import (
    INTERNAL_ERROR_EXIT_CODE,
    ConfigError,
    TuneforgeError,
    UserError,
    write_termination_log,
)

logger = logging.getLogger("tuning")
RESOLVED_CONFIG_NAME = "tuneforge_config.json"


def load_job(argv: Sequence[str]) -> JobConfig:
    """Flags and/or JSON job -> a JobConfig whose values have the right types (no torch yet)."""
    return build_job_config(collect_values(argv), check_combinations=False)


def preflight(job: JobConfig) -> None:
    """Check flag combinations, data, paths and templates before any weights load.

    Every problem found is reported in one message.
    """
    from tuning.data.preflight import preflight_data

    problems = cross_checks(job) + list(preflight_data(job.data))
    if job.acceleration.quantization_method == "mxfp4" and job.model.model_name_or_path:
        from tuning.models.loading import mxfp4_problem

        problems += [p for p in [mxfp4_problem(job.model.model_name_or_path)] if p]
    for flag in ("model_name_or_path", "tokenizer_name_or_path"):
        value = getattr(job.model, flag)
        if value and _looks_local(value) and not Path(value).exists():
            problems.append(f"--{flag} {value!r} does not exist.")
    if job.data.data_config_path and not problems:
        from tuning.data.config.load import load_data_config

        streaming = load_data_config(job.data.data_config_path).dataprocessor.streaming
        if streaming and int(job.hf_training.get("max_steps", -1)) <= 0:
            problems.append(
                "The data config streams its data (streaming: true), so the number of steps "
                "cannot be known in advance: set --max_steps."
            )
        if streaming and job.training.packing:
            problems.append(
                "--packing needs the whole dataset to pack it best-fit; it cannot pack a stream "
                "(streaming: true). Use --padding_free huggingface instead, or drop streaming."
            )
    if problems:
        raise ConfigError(
            f"Preflight found {len(problems)} problem(s): "
            + " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        )


def _looks_local(value: str) -> bool:
    return value.startswith((".", "/", "~")) or os.environ.get("HF_HUB_OFFLINE") == "1"


def save_resolved_config(job: JobConfig) -> None:
    """Record what actually ran (secrets redacted) next to the checkpoints."""
    out = Path(job.training.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{RESOLVED_CONFIG_NAME}.tmp"
    tmp.write_text(json.dumps(job.resolved(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / RESOLVED_CONFIG_NAME)


def run(job: JobConfig) -> None:
    """Load tokenizer and data, then model; train; save."""
    from tuning.data.pipeline import prepare_datasets
    from tuning.models.loading import effective_max_length, load_tokenizer
    from tuning.training.run import save_processed_data, train

    tokenizer = load_tokenizer(job)
    max_length = effective_max_length(job, tokenizer)
    seed = int(job.hf_training.get("seed", 42))
    data = prepare_datasets(
        job.data,
        tokenizer,
        max_length,
        seed=seed,
        streaming_ok=not job.data.do_dataprocessing_only,
        cache_dir=job.training.cache_dir,
    )
    save_resolved_config(job)
    if job.data.do_dataprocessing_only:
        save_processed_data(job, data)
        return
    train(job, tokenizer, data, max_length)


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
        for notice in job.notices:
            logger.warning(notice)
        preflight(job)
        run(job)
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
