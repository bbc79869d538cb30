"""Load → handlers → tokens and labels → drop zero-label rows → split → mix.

One path serves every job: a flag-only job is first turned into an equivalent in-memory data
config (tuning/data/from_flags.py). Every handler name and argument is validated before any data is
read. What comes out is a train and an eval dataset of `input_ids` + `labels`, and a DataReport
describing exactly what the model will see.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuning.data.config.schema import DataConfig, DatasetSpec
from tuning.data.finish import (
    CHAT_MASKING,
    check_token_rows,
    drop_zero_labels,
    ensure_labels,
    finishing_chain,
    fit_long_rows,
    normalise,
    stream_checks,
)
from tuning.data.handlers.apply import apply_chain, column_names
from tuning.data.handlers.binding import BoundHandler
from tuning.data.handlers.registry import STAT_COLUMNS, HandlerContext
from tuning.data.labels.base import require_fast_tokenizer
from tuning.data.plan import DataPlan
from tuning.data.report import (
    AuditResult,
    DataReport,
    DatasetReport,
    MixtureEntry,
    audit_chat_masks,
)
from tuning.data.sources import detect_builder, load_rows, resolve_data_paths
from tuning.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset, IterableDataset

logger = logging.getLogger(__name__)

SOURCE_COLUMN = "_tf_source"
DEFAULT_AUDIT_ROWS = 64


@dataclass
class PreparedData:
    """The datasets the trainer gets, and what was learnt while making them."""

    train: Dataset | IterableDataset | None
    eval: Dataset | IterableDataset | None
    report: DataReport = field(default_factory=DataReport)
    streaming: bool = False  # an IterableDataset: the trainer must have max_steps
    # each dataset after its handlers, before the split and the mix (for previews and checks)
    parts: dict[str, Dataset | IterableDataset] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# context


def _bos_text(tokenizer: Any) -> str:
    """The BOS text when the tokenizer puts BOS in front of plain text by itself."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    bos = getattr(tokenizer, "bos_token", None)
    if bos_id is None or not isinstance(bos, str):
        return ""
    with_specials = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bos if with_specials[:1] == [bos_id] and without[:1] != [bos_id] else ""


def handler_context(
    tokenizer: Any, max_seq_length: int, chat_template: str | None, name: str
) -> Any:
    from tuning.data.labels.chat import special_tokens_of

    return HandlerContext(
        tokenizer=tokenizer,
        max_seq_length=max_seq_length,
        dataset_name=name,
        chat_template=chat_template,
        special_tokens=special_tokens_of(tokenizer),
        bos_text=_bos_text(tokenizer),
    )


# ---------------------------------------------------------------------------------------------
# one dataset


def _audit(
    raw: Any, chain: list[BoundHandler], ctx: HandlerContext, size: int
) -> AuditResult | None:
    """Cross-check the chat mask of the first rows with the second method.

    The audit is a diagnostic: if it cannot run (e.g. the rows do not fit one arrow schema), the
    run goes on with a warning.
    """
    from datasets import Dataset

    from tuning.data.handlers.tokenize import chat_max_length

    index = next((j for j, b in enumerate(chain) if b.info.name == CHAT_MASKING), None)
    if index is None or size <= 0:
        return None
    try:
        rows = [dict(row) for row in raw.take(size)]
        if rows and index > 0:  # the steps before the chat handler, on the sample only
            rows = [dict(row) for row in apply_chain(Dataset.from_list(rows), chain[:index], ctx)]
        bound = chain[index]
        return audit_chat_masks(
            rows, bound.args.conversation_column, ctx, chat_max_length(bound.args, ctx)
        )
    except Exception as exc:  # a failed cross-check must not stop training
        logger.warning("Dataset '%s': mask audit skipped (%s).", ctx.dataset_name, exc)
        return None


def _split(dataset: Any, spec: DatasetSpec, seed: int, streaming: bool) -> tuple[Any, Any]:
    """(train part, validation part) of one dataset, by its split fractions: the first rows
    train, the next ones validate (the rows were shuffled before unless shuffle: false)."""
    import math

    if spec.split is None:
        return dataset, None
    train, validation = spec.split.train, spec.split.validation
    if streaming:  # plan_data refused any other split
        return dataset, None
    total = len(dataset)
    n_val = math.ceil(total * validation - 1e-9) if validation > 0 else 0
    if train + validation >= 1.0 - 1e-9:
        n_train = total - n_val
    else:
        n_train = math.floor(total * train + 1e-9)
    n_train = min(n_train, total - n_val)
    train_part = dataset.select(range(n_train)) if n_train else None
    val_part = dataset.select(range(n_train, n_train + n_val)) if n_val else None
    if train > 0 and train_part is None:
        raise DataError(
            f"dataset '{spec.name}' has {total} rows, too few for a training share of {train:g}."
        )
    if validation > 0 and val_part is None:
        raise DataError(
            f"dataset '{spec.name}' has {total} rows, too few for a validation share of "
            f"{validation:g}."
        )
    return train_part, val_part


@dataclass
class _Processed:
    spec: DatasetSpec
    processed: Any
    train: Any
    eval: Any
    report: DatasetReport


def _process_one(
    index: int,
    spec: DatasetSpec,
    chain: list[BoundHandler],
    plan: DataPlan,
    base_ctx: HandlerContext,
    *,
    streaming: bool,
    cache_dir: str | None,
) -> _Processed:
    config = plan.config
    where = f"datasets[{index}]"
    base = config.source_path.parent if config.source_path else Path.cwd()
    paths = resolve_data_paths(spec.data_paths, base_dir=base, field=f"{where}.data_paths")
    builder = detect_builder(paths, spec.builder)
    raw = load_rows(
        paths, builder, split_name=spec.dataset_split_name, streaming=streaming, cache_dir=cache_dir
    )
    ctx = dataclasses.replace(base_ctx, dataset_name=spec.name)
    dataset = apply_chain(raw, chain, ctx)
    finishing = finishing_chain(dataset, spec, chain, plan.flags, where)
    dataset = apply_chain(dataset, finishing, ctx)
    chain = [*chain, *finishing]
    dataset = ensure_labels(dataset, spec.name)
    dataset = check_token_rows(dataset, spec.name, len(ctx.tokenizer))
    dataset = fit_long_rows(dataset, ctx.max_seq_length, ctx.tokenizer.bos_token_id)
    dataset = normalise(dataset)
    report = DatasetReport(name=spec.name)
    tolerance = max(plan.flags.zero_label_tolerance, config.dataprocessor.max_zero_label_fraction)
    audit_rows = config.dataprocessor.audit_sample_size
    if streaming:
        dataset = stream_checks(
            dataset, report, tolerance, chain, ctx.tokenizer, max(audit_rows, DEFAULT_AUDIT_ROWS)
        )
    else:
        if len(dataset) == 0:
            raise DataError(
                f"dataset '{spec.name}' has no rows left after its handlers; check its filters."
            )
        report.filtered_rows = len(raw) - len(dataset)
        dataset = drop_zero_labels(dataset, report, tolerance, chain, ctx.tokenizer)
    _log_truncation(report)
    present = [c for c in STAT_COLUMNS if c in column_names(dataset)]
    if present:
        dataset = dataset.remove_columns(present)
    report.audit = _audit(raw, chain, ctx, audit_rows)
    processed = dataset
    if spec.shuffled():  # before the split, so a split takes random rows
        seed = config.dataprocessor.seed
        dataset = (
            dataset.shuffle(seed=seed, buffer_size=1000)
            if streaming
            else dataset.shuffle(seed=seed)
        )
    train, validation = _split(dataset, spec, config.dataprocessor.seed, streaming)
    if not streaming:
        report.train_rows = len(train) if train is not None else 0
        report.eval_rows = len(validation) if validation is not None else 0
    return _Processed(spec, processed, train, validation, report)


def _log_truncation(report: DatasetReport) -> None:
    logger.info(
        "Dataset '%s': %d samples%s, %d removed by the handlers' filters, %d with the prompt "
        "trimmed, %d with the response trimmed, %d without a trained token.",
        report.name,
        report.rows,
        " (the first of the stream)" if report.sampled else "",
        report.filtered_rows,
        report.truncated_prompt_rows,
        report.truncated_response_rows,
        report.zero_label_rows,
    )


# ---------------------------------------------------------------------------------------------
# mixing


def _mix(
    parts: list[_Processed], config: DataConfig, streaming: bool
) -> tuple[Any, list[MixtureEntry]]:
    import datasets

    training = [p for p in parts if p.train is not None]  # the config has at least one
    sampled = any(p.spec.sampling is not None for p in training)
    entries = [MixtureEntry(p.spec.name, p.spec.sampling) for p in training]
    tagged = [
        p.train if streaming else p.train.add_column(SOURCE_COLUMN, [i] * len(p.train))
        for i, p in enumerate(training)
    ]
    if len(tagged) == 1:
        mixed = tagged[0]
    elif sampled:
        mixed = datasets.interleave_datasets(
            tagged,
            probabilities=[p.spec.sampling or 0.0 for p in training],
            seed=config.dataprocessor.seed,
            stopping_strategy=config.dataprocessor.sampling_stopping_strategy,
        )
    else:
        mixed = datasets.concatenate_datasets(tagged)
    if streaming:
        return mixed, entries
    _count_mixture(mixed, entries)
    return mixed.remove_columns(SOURCE_COLUMN), entries


def _count_mixture(mixed: Any, entries: list[MixtureEntry]) -> None:
    import numpy as np
    import pyarrow.compute as pc

    table = mixed.with_format("arrow")[:]
    sources = table.column(SOURCE_COLUMN).to_numpy()
    lengths = pc.list_value_length(table.column("input_ids").combine_chunks()).to_numpy()
    for i, entry in enumerate(entries):
        chosen = sources == i
        entry.rows = int(chosen.sum())
        entry.tokens = int(np.asarray(lengths)[chosen].sum())


def _concat_eval(parts: list[_Processed]) -> Any:
    import datasets

    evals = [p.eval for p in parts if p.eval is not None]
    if not evals:
        return None
    return evals[0] if len(evals) == 1 else datasets.concatenate_datasets(evals)


# ---------------------------------------------------------------------------------------------
# entry point


@contextlib.contextmanager
def _main_process_first() -> Iterator[None]:
    """Process on the main rank first; the other ranks then hit datasets' cache."""
    try:
        from accelerate import PartialState
    except ImportError:
        yield
        return
    # per node: nodes that do not share a datasets cache each process once, not one at a time
    with PartialState().local_main_process_first():
        yield


def prepare_datasets(
    plan: DataPlan,
    tokenizer: Any,
    max_seq_length: int,
    *,
    streaming_ok: bool = True,
    cache_dir: str | None = None,
) -> PreparedData:
    """Run the data plan: train/eval datasets of input_ids + labels, and what was learnt.

    `streaming_ok=False` processes a `streaming: true` config in memory instead (e.g. to save
    the processed data). Raises DataError for what only the data itself can show.
    """
    require_fast_tokenizer(tokenizer)
    if plan.mode is not None:
        logger.info("No data config: processing the data as %s.", plan.mode)
    config = plan.config
    streaming = config.dataprocessor.streaming and streaming_ok
    if config.dataprocessor.streaming and not streaming_ok:
        logger.info("streaming: true is ignored here; the data is processed in memory.")
    chat_template = (
        config.resolved_chat_template()
        or plan.flags.chat_template
        or getattr(tokenizer, "chat_template", None)
    )
    base_ctx = handler_context(tokenizer, max_seq_length, chat_template, "")
    with _main_process_first():
        parts = [
            _process_one(
                i, spec, list(chain), plan, base_ctx, streaming=streaming, cache_dir=cache_dir
            )
            for i, (spec, chain) in enumerate(zip(config.datasets, plan.chains, strict=True))
        ]
        train, mixture = _mix(parts, config, streaming)
        evaluation = _concat_eval(parts)
    report = DataReport(
        datasets=[p.report for p in parts],
        mixture=mixture,
        streaming=streaming,
        train_rows=None if streaming else len(train),
        eval_rows=None if streaming or evaluation is None else len(evaluation),
    )
    report.log()
    return PreparedData(
        train=train,
        eval=evaluation,
        report=report,
        streaming=streaming,
        parts={p.spec.name: p.processed for p in parts},
    )
