"""What the prepared data looks like: per-dataset counts, the mixture and the mask audit.

The numbers come from the tokenized rows themselves (arrow columns, no Python loop over rows), so
the report describes exactly what the model will see. The mask audit recomputes a sample of chat
rows with a second, independent method (re-rendering each conversation prefix) and reports how
often the two agree.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tuning.data.handlers.registry import TRIMMED_PROMPT, TRIMMED_RESPONSE
from tuning.data.labels.base import IGNORE_INDEX

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from datasets import Dataset

    from tuning.data.handlers.registry import HandlerContext

logger = logging.getLogger(__name__)


@dataclass
class AuditResult:
    """Agreement between the primary chat mask and the prefix re-rendering method."""

    rows_checked: int = 0
    rows_agreeing: int = 0
    tokens_checked: int = 0
    tokens_agreeing: int = 0
    example_disagreement: str | None = None

    @property
    def row_agreement_pct(self) -> float:
        return 100.0 * self.rows_agreeing / self.rows_checked if self.rows_checked else 100.0

    @property
    def token_agreement_pct(self) -> float:
        return 100.0 * self.tokens_agreeing / self.tokens_checked if self.tokens_checked else 100.0


@dataclass
class DatasetReport:
    """One dataset after its handlers: rows, tokens, what is trained and what was cut."""

    name: str
    rows: int = 0
    train_rows: int = 0
    eval_rows: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    zero_label_rows: int = 0
    zero_label_example: str | None = None
    filtered_rows: int = 0  # removed by the handlers (e.g. skip_samples_with_large_columns)
    truncated_prompt_rows: int = 0
    truncated_response_rows: int = 0
    audit: AuditResult | None = None
    sampled: bool = False  # streaming: counts describe the first rows only

    @property
    def trained_pct(self) -> float:
        return 100.0 * self.trained_tokens / self.tokens if self.tokens else 0.0


@dataclass
class MixtureEntry:
    """One dataset's part of the training set."""

    name: str
    sampling: float | None
    rows: int | None = None
    tokens: int | None = None

    def share(self, total: int) -> float | None:
        return None if self.rows is None or not total else self.rows / total


@dataclass
class DataReport:
    """Everything `prepare_datasets` learnt about the data; JSON-serialisable via to_dict()."""

    datasets: list[DatasetReport] = field(default_factory=list)
    mixture: list[MixtureEntry] = field(default_factory=list)
    streaming: bool = False
    train_rows: int | None = None
    eval_rows: int | None = None

    def dataset(self, name: str) -> DatasetReport:
        return next(d for d in self.datasets if d.name == name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for entry, report in zip(data["datasets"], self.datasets, strict=True):
            entry["trained_pct"] = round(report.trained_pct, 2)
            if report.audit is not None:
                entry["audit"]["row_agreement_pct"] = round(report.audit.row_agreement_pct, 2)
                entry["audit"]["token_agreement_pct"] = round(report.audit.token_agreement_pct, 2)
        return data

    def table(self) -> str:
        """A short fixed-width table, one line per dataset, then the mixture."""
        header = (
            f"{'dataset':<24} {'rows':>7} {'train':>7} {'eval':>6} {'tokens':>9} "
            f"{'trained%':>8} {'filtered':>8} {'no-label':>8} {'cut-prompt':>10} {'cut-resp':>8} "
            f"{'audit':>7}"
        )
        lines = [header]
        for d in self.datasets:
            audit = f"{d.audit.row_agreement_pct:.0f}%" if d.audit and d.audit.rows_checked else "-"
            name = d.name + (" *" if d.sampled else "")
            lines.append(
                f"{name[:24]:<24} {d.rows:>7} {d.train_rows:>7} {d.eval_rows:>6} {d.tokens:>9} "
                f"{d.trained_pct:>7.1f}% {d.filtered_rows:>8} {d.zero_label_rows:>8} "
                f"{d.truncated_prompt_rows:>10} "
                f"{d.truncated_response_rows:>8} {audit:>7}"
            )
        if any(d.sampled for d in self.datasets):
            lines.append("* streaming: counted on the first rows only")
        if self.mixture:
            total = sum(m.rows or 0 for m in self.mixture)
            parts = []
            for m in self.mixture:
                share = m.share(total)
                shown = f"{m.name}: {m.rows} rows" if m.rows is not None else f"{m.name}: ?"
                if m.tokens is not None:
                    shown += f", {m.tokens} tokens"
                if share is not None:
                    shown += f" ({100 * share:.1f}%"
                    shown += f", asked {100 * m.sampling:.1f}%)" if m.sampling is not None else ")"
                parts.append(shown)
            lines.append("training mixture: " + "; ".join(parts))
        return "\n".join(lines)

    def log(self) -> None:
        logger.info("Prepared data:\n%s", self.table())


# ---------------------------------------------------------------------------------------------
# per-row statistics from arrow columns


@dataclass
class RowStats:
    """Per-row token count, trained-token count and trimmed counts of a tokenized dataset."""

    lengths: np.ndarray
    trained: np.ndarray
    trimmed_prompt: np.ndarray
    trimmed_response: np.ndarray


def _list_column(table: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(row lengths, flat values) of a list<int> column."""
    import numpy as np
    import pyarrow.compute as pc

    column = table.column(name).combine_chunks()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return np.nan_to_num(lengths).astype(np.int64), values


def _int_column(table: Any, name: str, rows: int) -> np.ndarray:
    import numpy as np

    if name not in table.column_names:
        return np.zeros(rows, dtype=np.int64)
    return table.column(name).to_numpy().astype(np.int64)


def row_stats(dataset: Dataset) -> RowStats:
    """Counts for every row of a tokenized (input_ids + labels) Dataset."""
    import numpy as np

    table = dataset.with_format("arrow")[:]
    lengths, _ = _list_column(table, "input_ids")
    label_lengths, labels = _list_column(table, "labels")
    trained_flat = np.concatenate([[0], np.cumsum(labels != IGNORE_INDEX)])
    bounds = np.concatenate([[0], np.cumsum(label_lengths)])
    trained = trained_flat[bounds[1:]] - trained_flat[bounds[:-1]]
    rows = len(lengths)
    return RowStats(
        lengths=lengths,
        trained=trained.astype(np.int64),
        trimmed_prompt=_int_column(table, TRIMMED_PROMPT, rows),
        trimmed_response=_int_column(table, TRIMMED_RESPONSE, rows),
    )


def row_stats_from_rows(rows: Sequence[dict[str, Any]]) -> RowStats:
    """The same counts for rows already in memory (the first rows of a stream)."""
    import numpy as np

    return RowStats(
        lengths=np.array([len(r["input_ids"]) for r in rows], dtype=np.int64),
        trained=np.array(
            [sum(label != IGNORE_INDEX for label in r["labels"]) for r in rows], dtype=np.int64
        ),
        trimmed_prompt=np.array([r.get(TRIMMED_PROMPT, 0) for r in rows], dtype=np.int64),
        trimmed_response=np.array([r.get(TRIMMED_RESPONSE, 0) for r in rows], dtype=np.int64),
    )


def fill_counts(report: DatasetReport, stats: RowStats) -> None:
    """Rows, tokens, trained tokens and truncation counts of the rows that are kept."""
    kept = stats.trained > 0
    report.rows = len(stats.lengths)
    report.zero_label_rows = int((~kept).sum())
    report.tokens = int(stats.lengths[kept].sum())
    report.trained_tokens = int(stats.trained[kept].sum())
    report.truncated_prompt_rows = int((stats.trimmed_prompt > 0).sum())
    report.truncated_response_rows = int((stats.trimmed_response > 0).sum())


# ---------------------------------------------------------------------------------------------
# mask audit


def audit_chat_masks(
    rows: Sequence[dict[str, Any]], column: str, ctx: HandlerContext, max_length: int | None
) -> AuditResult:
    """Compare the primary chat mask with the prefix re-rendering method on `rows`.

    A row agrees when both methods give the same text and the same labels; tokens are compared
    position by position. Templates whose rendering of a prefix differs from the start of the
    full conversation make the second method disagree; the primary method does not depend on it.
    """
    from tuning.data.handlers.text import rows_of_columns
    from tuning.data.handlers.tokenize import chat_texts_and_spans
    from tuning.data.labels.masking import encode_with_spans

    result = AuditResult()
    if not rows:
        return result
    batch = rows_of_columns(rows)
    texts, spans = chat_texts_and_spans(batch, column, ctx, method="primary")
    other_texts, other_spans = chat_texts_and_spans(batch, column, ctx, method="prefix")
    primary = encode_with_spans(ctx.tokenizer, texts, spans, max_length).rows()
    second = encode_with_spans(ctx.tokenizer, other_texts, other_spans, max_length).rows()
    for index, (a, b) in enumerate(zip(primary, second, strict=True)):
        result.rows_checked += 1
        same_text = texts[index] == other_texts[index]
        compared = len(a.labels)
        agreeing = sum(x == y for x, y in zip(a.labels, b.labels, strict=False)) if same_text else 0
        result.tokens_checked += compared
        result.tokens_agreeing += agreeing
        if same_text and a.labels == b.labels:
            result.rows_agreeing += 1
        elif result.example_disagreement is None:
            result.example_disagreement = texts[index][:300]
    return result
