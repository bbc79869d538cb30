"""From a handler chain's output to clean rows of input_ids + labels, with their counts.

After a dataset's handlers run, this module finishes it: a chain that stopped at text is
tokenized with the completion mask of the flags, untouched rows are read like a flag-only job's,
missing labels train every token, rows longer than the maximum are cut like any other sample
(prompt from the left, response kept), the columns get one type so datasets can be mixed, and
rows with no trained token are counted, reported and dropped (or stop the run). Rows the model
cannot take (token ids outside the vocabulary, labels of another length) stop the run here, with
the count and the first such row, instead of an IndexError at the first forward.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuning.config.schema import DataArgs
from tuning.data.config.schema import DatasetSpec, HandlerArguments
from tuning.data.from_flags import handlers_for, pick_mode
from tuning.data.handlers.apply import column_names
from tuning.data.handlers.binding import BoundHandler, bind_handler
from tuning.data.handlers.registry import STAT_COLUMNS, TRIMMED_PROMPT, TRIMMED_RESPONSE
from tuning.data.labels.base import IGNORE_INDEX
from tuning.data.labels.masking import fit_to_length
from tuning.data.report import DatasetReport, fill_counts, row_stats, row_stats_from_rows
from tuning.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

logger = logging.getLogger(__name__)

COMPLETION = "tokenize_with_completion_mask"
CHAT_MASKING = "tokenize_and_apply_chat_template_with_masking"


def completion_stage(text_column: str, data_args: DataArgs, where: str) -> BoundHandler:
    """tokenize_with_completion_mask on a text column, with the flags' templates."""
    arguments = HandlerArguments(
        fn_kwargs={
            "text_column_name": text_column,
            "response_template": data_args.response_template,
            "instruction_template": data_args.instruction_template,
            "add_eos_token": True,
        },
        batched=True,
        remove_columns="all",
    )
    return bind_handler(COMPLETION, arguments, f"{where} (final tokenization)")


def finishing_chain(
    dataset: Any, spec: DatasetSpec, chain: list[BoundHandler], data_args: DataArgs, where: str
) -> list[BoundHandler]:
    """What turns the chain's output into input_ids + labels, when it is not there yet.

    A chain that ends with a text column (a jinja or chat-template rendering) is tokenized with
    the completion mask of --response_template/--instruction_template. Rows no handler touched
    are read like a flag-only job's rows (input/output, messages, --dataset_text_field, ...).
    """
    columns = column_names(dataset)
    if "input_ids" in columns:
        if data_args.response_template or data_args.instruction_template:
            logger.warning(
                "Dataset '%s' is already tokenized (input_ids after its handlers), so "
                "--response_template/--instruction_template do not apply to it.",
                spec.name,
            )
        return []
    text_column = data_args.dataset_text_field
    if chain and (not text_column or text_column not in columns):
        written = chain[-1].args.writes() if hasattr(chain[-1].args, "writes") else []
        written = [c for c in written if c in columns and c not in STAT_COLUMNS]
        text_column = written[0] if len(written) == 1 else None
    if chain and text_column is None:
        raise DataError(
            f"dataset '{spec.name}' has no input_ids after its handlers (columns: "
            f"{', '.join(columns)}). End its data_handlers with a tokenizing handler (e.g. "
            "tokenize_and_apply_input_masking or tokenize_and_apply_chat_template_with_masking), "
            "or name the text column with --dataset_text_field."
        )
    if text_column is not None and (chain or data_args.data_formatter_template is None):
        if not data_args.response_template:
            logger.warning(
                "Dataset '%s' ends with text column '%s' and no --response_template is set: "
                "every token of it is trained.",
                spec.name,
                text_column,
            )
        return [completion_stage(text_column, data_args, where)]
    rows = [dict(row) for row in dataset.take(1)]
    mode = pick_mode(data_args, rows, f"dataset '{spec.name}'")
    logger.info("Dataset '%s' has no handlers: processing it as %s.", spec.name, mode)
    return [
        bind_handler(handler.name, handler.arguments, f"{where} ({mode})")
        for handler in handlers_for(mode, data_args)
    ]


def ensure_labels(dataset: Any, name: str) -> Any:
    if "labels" in column_names(dataset):
        return dataset
    logger.info("Dataset '%s' has input_ids but no labels: every token is trained.", name)
    return dataset.map(lambda batch: {"labels": batch["input_ids"]}, batched=True)


def _fit_batch(
    batch: dict[str, list[Any]], max_length: int, bos_id: int | None
) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {
        "input_ids": [],
        "labels": [],
        TRIMMED_PROMPT: [],
        TRIMMED_RESPONSE: [],
    }
    for index, (ids, labels) in enumerate(zip(batch["input_ids"], batch["labels"], strict=True)):
        keep_first = bool(ids) and bos_id is not None and ids[0] == bos_id
        fitted = fit_to_length(list(ids), list(labels), max_length, keep_first)
        out["input_ids"].append(fitted.input_ids)
        out["labels"].append(fitted.labels)
        for column, added in (
            (TRIMMED_PROMPT, fitted.trimmed_prompt_tokens),
            (TRIMMED_RESPONSE, fitted.trimmed_response_tokens),
        ):
            before = batch[column][index] if column in batch else 0
            out[column].append(before + added)
    return out


def fit_long_rows(dataset: Any, max_length: int | None, bos_id: int | None) -> Any:
    """Cut rows longer than max_length (pretokenized data, a `tokenize` max_length above it)
    the way every tokenizing handler does: prompt from the left, response kept, counted."""
    from datasets import IterableDataset

    if max_length is None:
        return dataset
    if not isinstance(dataset, IterableDataset) and (
        len(dataset) == 0 or int(row_stats(dataset).lengths.max()) <= max_length
    ):
        return dataset
    return dataset.map(
        _fit_batch, batched=True, fn_kwargs={"max_length": max_length, "bos_id": bos_id}
    )


def normalise(dataset: Any) -> Any:
    """Keep input_ids and labels (and the stat columns) with one type, so datasets can be mixed."""
    from datasets import Features, List, Value

    present = column_names(dataset)
    dataset = dataset.select_columns(
        [c for c in present if c in ("input_ids", "labels", *STAT_COLUMNS)]
    )
    # the types datasets itself infers for these columns, so the usual case needs no cast
    wanted = {"input_ids": List(Value("int32")), "labels": List(Value("int64"))}
    features = dataset.features
    if features is None:
        return dataset
    if any(features.get(name) != kind for name, kind in wanted.items()):
        target = Features({**features, **wanted})
        dataset = dataset.cast(target)
    return dataset


def _zero_label_hint(chain: list[BoundHandler]) -> str:
    last = chain[-1] if chain else None
    if last is not None and last.info.name == COMPLETION:
        template = getattr(last.args, "response_template", None)
        if template:
            return (
                f"The response template {template!r} never occurs in the text of these samples; "
                "check its leading whitespace/newline, it must match the text exactly "
                "(e.g. '\\n### Response:' is not ' ### Response:')."
            )
    if last is not None and last.info.name == CHAT_MASKING:
        return "These conversations have no assistant turn with content to train."
    if last is not None and last.info.name == "tokenize_and_apply_input_masking":
        return "Their output column is empty (and add_eos_token is off)."
    return "Check the masking settings of this dataset."


def drop_zero_labels(
    dataset: Any, report: DatasetReport, tolerance: float, chain: list[BoundHandler], tokenizer: Any
) -> Any:
    """Count rows with no trained token, fail past the tolerance, drop the rest of them."""
    import numpy as np

    stats = row_stats(dataset)
    fill_counts(report, stats)
    zero = np.flatnonzero(stats.trained == 0)
    if zero.size:
        example = tokenizer.decode(dataset[int(zero[0])]["input_ids"])
        report.zero_label_example = example[:500]
        _check_zero_fraction(report, tolerance, chain)
        dataset = dataset.select(np.flatnonzero(stats.trained > 0))
    return dataset


def _check_zero_fraction(
    report: DatasetReport, tolerance: float, chain: list[BoundHandler]
) -> None:
    if not report.zero_label_rows:
        return
    fraction = report.zero_label_rows / max(report.rows, 1)
    logger.warning(
        "Dataset '%s': %d of %d samples have no trained token and are dropped.",
        report.name,
        report.zero_label_rows,
        report.rows,
    )
    if fraction > tolerance:
        raise DataError(
            f"{report.zero_label_rows} of {report.rows} samples in dataset '{report.name}' have "
            f"no trained token (every label is -100), more than the allowed fraction "
            f"{tolerance:g}. Example: {report.zero_label_example!r}. {_zero_label_hint(chain)} "
            "To drop such samples instead, raise --zero_label_tolerance (or the data config's "
            "dataprocessor.max_zero_label_fraction)."
        )


def _has_trained_label(row: dict[str, Any]) -> bool:
    return any(label != IGNORE_INDEX for label in row["labels"])


def stream_checks(
    dataset: Any,
    report: DatasetReport,
    tolerance: float,
    chain: list[BoundHandler],
    tokenizer: Any,
    sample: int,
) -> Any:
    """A stream cannot be counted: check its first rows, then drop zero-label rows lazily."""
    rows = list(dataset.take(sample))
    report.sampled = True
    stats = row_stats_from_rows(rows)
    fill_counts(report, stats)
    first_zero = next((r for r in rows if not _has_trained_label(r)), None)
    if first_zero is not None:
        report.zero_label_example = tokenizer.decode(first_zero["input_ids"])[:500]
        _check_zero_fraction(report, tolerance, chain)
    return dataset.filter(_has_trained_label)


# ---------------------------------------------------------------------------------------------
# token rows the model can take


@dataclass
class RowProblems:
    """Rows whose input_ids/labels the model cannot take, found over whole Arrow columns."""

    checked: int  # rows looked at
    bad: np.ndarray  # their indices (among the rows looked at), ascending
    kinds: dict[str, int]  # rows per kind of problem
    first: str | None  # what is wrong with the first bad row

    @property
    def count(self) -> int:
        return int(self.bad.size)


_OUTSIDE = "with a token id outside the vocabulary"
_NEGATIVE = "with a negative or missing token id"
_LENGTH = "with labels not as long as input_ids"
_LABEL = "with a label that is neither -100 nor a token id"


def _flat_ints(column: Any, what: str, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row lengths, flat values as int64, flat missing-value mask) of a list<number> column."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    list_like = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    list_like = list_like or pa.types.is_fixed_size_list(kind)
    if not list_like or not (
        pa.types.is_integer(kind.value_type)
        or pa.types.is_floating(kind.value_type)
        or pa.types.is_null(kind.value_type)
    ):
        raise DataError(
            f"dataset '{name}': {what} must be lists of integer token ids, not {kind}. "
            "Fix the tokenizing handler or the pretokenized file."
        )
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(column)
    missing = values.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(values.type):
        missing = missing | pc.is_nan(values).fill_null(True).to_numpy(zero_copy_only=False)
        values = pc.if_else(missing, 0, values)
        numbers = values.to_numpy(zero_copy_only=False).astype(np.int64)
    elif pa.types.is_null(values.type):
        numbers = np.zeros(len(values), dtype=np.int64)
    else:
        numbers = values.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return lengths.astype(np.int64), numbers, missing.astype(bool)


def _rows_of(flags: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per row: whether any of its flat values is flagged."""
    import numpy as np

    counts = np.concatenate([[0], np.cumsum(flags)])
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return (counts[bounds[1:]] - counts[bounds[:-1]]) > 0


def _first_in_row(flags: np.ndarray, lengths: np.ndarray, row: int) -> int:
    """Position (within the row) of the row's first flagged value."""
    import numpy as np

    start = int(lengths[:row].sum())
    return int(np.flatnonzero(flags[start : start + int(lengths[row])])[0])


def token_problems(ids: Any, labels: Any, vocab_size: int, name: str) -> RowProblems:
    """Check input_ids/labels Arrow columns: ids in 0..vocab_size-1, labels -100 or such an id,
    as many labels as ids. Vectorised: no Python loop over rows or tokens."""
    import numpy as np

    id_lengths, id_values, id_missing = _flat_ints(ids, "input_ids", name)
    label_lengths, label_values, label_missing = _flat_ints(labels, "labels", name)
    outside = ~id_missing & (id_values >= vocab_size)
    negative = id_missing | (id_values < 0)
    bad_label = label_missing | (label_values >= vocab_size)
    bad_label |= (label_values < 0) & (label_values != IGNORE_INDEX)
    rows = {
        _OUTSIDE: _rows_of(outside, id_lengths),
        _NEGATIVE: _rows_of(negative, id_lengths),
        _LENGTH: id_lengths != label_lengths,
        _LABEL: _rows_of(bad_label, label_lengths),
    }
    any_bad = np.logical_or.reduce(list(rows.values()))
    bad = np.flatnonzero(any_bad)
    kinds = {kind: int(flags.sum()) for kind, flags in rows.items() if flags.any()}
    first = None
    if bad.size:
        row = int(bad[0])
        start = int(id_lengths[:row].sum())
        if rows[_OUTSIDE][row] or rows[_NEGATIVE][row]:
            position = _first_in_row(outside | negative, id_lengths, row)
            value = id_values[start + position]
            if id_missing[start + position]:
                first = f"token id at position {position} is missing (null)"
            elif value < 0:
                first = f"token id {value} at position {position} is negative"
            else:
                first = (
                    f"token id {value} at position {position} is outside the vocabulary "
                    f"({vocab_size} tokens)"
                )
        elif rows[_LENGTH][row]:
            first = (
                f"it has {int(label_lengths[row])} labels for {int(id_lengths[row])} input_ids "
                "(they must be the same length)"
            )
        else:
            position = _first_in_row(bad_label, label_lengths, row)
            label_start = int(label_lengths[:row].sum())
            value = label_values[label_start + position]
            if label_missing[label_start + position]:
                first = f"label at position {position} is missing (null)"
            elif value < 0:
                first = (
                    f"label {value} at position {position} is negative (only {IGNORE_INDEX}, "
                    "not trained, may be)"
                )
            else:
                first = (
                    f"label {value} at position {position} is outside the vocabulary "
                    f"({vocab_size} tokens)"
                )
    return RowProblems(checked=len(id_lengths), bad=bad, kinds=kinds, first=first)


def _token_fix(kinds: dict[str, int], vocab_size: int) -> str:
    fixes = []
    if _OUTSIDE in kinds or _NEGATIVE in kinds:
        fixes.append(
            f"token ids must be 0..{vocab_size - 1}: tokenize the data with this model's "
            "tokenizer (--tokenizer_name_or_path, or the model's own)"
        )
    if _LENGTH in kinds:
        fixes.append("give every row as many labels as input_ids")
    if _LABEL in kinds:
        fixes.append(f"labels must be token ids, or {IGNORE_INDEX} for tokens not trained")
    return "Fix: " + "; ".join(fixes) + ". Or remove those rows."


def _token_error(name: str, problems: RowProblems, vocab_size: int, of: str, row: int) -> str:
    kinds = ", ".join(f"{count} {kind}" for kind, count in problems.kinds.items())
    return (
        f"dataset '{name}': {problems.count} of {of} rows have token ids or labels the model "
        f"cannot take ({kinds}). First: row {row}: {problems.first}. "
        f"{_token_fix(problems.kinds, vocab_size)}"
    )


def _check_stream_batch(
    batch: dict[str, list[Any]], indices: list[int], name: str, vocab_size: int
) -> list[bool]:
    import pyarrow as pa

    problems = token_problems(
        pa.array(batch["input_ids"]), pa.array(batch["labels"]), vocab_size, name
    )
    if problems.count:
        raise DataError(
            f"dataset '{name}' (streamed): row {indices[int(problems.bad[0])]} has token ids or "
            f"labels the model cannot take: {problems.first}. "
            f"{_token_fix(problems.kinds, vocab_size)}"
        )
    return [True] * len(indices)


def check_token_rows(dataset: Any, name: str, vocab_size: int, sample: int = 64) -> Any:
    """Stop on rows the model cannot take: token ids outside 0..vocab_size-1 (an IndexError at
    the first forward otherwise), labels of another length or other negative labels than -100.

    A Dataset is checked whole (Arrow columns, vectorised); a stream on its first `sample` rows
    here, then row by row as it is read. Returns the dataset (a stream with the check attached).
    """
    import pyarrow as pa
    from datasets import IterableDataset

    if isinstance(dataset, IterableDataset):
        rows = list(dataset.take(sample))
        if rows:
            problems = token_problems(
                pa.array([r["input_ids"] for r in rows]),
                pa.array([r["labels"] for r in rows]),
                vocab_size,
                name,
            )
            if problems.count:
                of = f"the first {len(rows)}"
                raise DataError(_token_error(name, problems, vocab_size, of, int(problems.bad[0])))
        return dataset.filter(
            _check_stream_batch,
            batched=True,
            with_indices=True,
            fn_kwargs={"name": name, "vocab_size": vocab_size},
        )
    if len(dataset) == 0:
        return dataset
    table = dataset.with_format("arrow")[:]
    problems = token_problems(table.column("input_ids"), table.column("labels"), vocab_size, name)
    if problems.count:
        raise DataError(
            _token_error(name, problems, vocab_size, str(problems.checked), int(problems.bad[0]))
        )
    return dataset
