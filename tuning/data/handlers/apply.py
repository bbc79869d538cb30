"""Run bound handlers over a datasets Dataset / IterableDataset (map, filter or whole-dataset
operations), with a cache key that follows the handler's code."""

from __future__ import annotations

import contextvars
import functools
import hashlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tuning.data.handlers.binding import BoundHandler, bind_handler
from tuning.data.handlers.registry import (
    STAT_COLUMNS,
    TRIMMED_PROMPT,
    TRIMMED_RESPONSE,
    HandlerContext,
    HandlerFn,
)
from tuning.errors import DataError, TuneforgeError

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset, IterableDataset

    from tuning.data.config.schema import HandlerSpec


def column_names(dataset: Dataset | IterableDataset) -> list[str]:
    """Column names, also for a streamed dataset whose features are not known yet."""
    names = dataset.column_names
    if names is not None:
        return list(names)
    for row in dataset.take(1):
        return list(row)
    return []


# Columns whose Arrow type is known: a batch made only of these (and replacing every input
# column) is handed to datasets as an Arrow table, skipping its per-value type inference. The
# types are the ones datasets infers (it stores input_ids as int32).
ARROW_TYPES = {
    "input_ids": ("list", "int32"),
    "labels": ("list", "int64"),
    TRIMMED_PROMPT: ("value", "int64"),
    TRIMMED_RESPONSE: ("value", "int64"),
}


_ARROW_OUTPUT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tuneforge_arrow_output", default=False
)


def arrow_output_allowed() -> bool:
    """Whether the running handler may return pyarrow arrays (only `_call` allows it, where
    the output becomes an Arrow table for datasets' map)."""
    return _ARROW_OUTPUT.get()


def _as_arrow(output: Mapping[str, Any]) -> Any:
    import pyarrow as pa

    columns = {}
    for name, values in output.items():
        if isinstance(values, pa.Array):
            columns[name] = values
            continue
        shape, dtype = ARROW_TYPES[name]
        value_type = pa.int32() if dtype == "int32" else pa.int64()
        columns[name] = pa.array(
            values, type=pa.list_(value_type) if shape == "list" else value_type
        )
    return pa.table(columns)


def _as_lists(output: dict[str, Any]) -> dict[str, Any]:
    import pyarrow as pa

    return {k: v.to_pylist() if isinstance(v, pa.Array) else v for k, v in output.items()}


def _rows_text(indices: Any) -> str:
    """'row 7', 'rows 0..999' or '' for the indices datasets passed (an int or a list)."""
    if isinstance(indices, int):
        return f"row {indices}"
    if indices is None:
        return ""
    indices = list(indices)
    if not indices:
        return ""
    if len(indices) == 1:
        return f"row {indices[0]}"
    return f"rows {indices[0]}..{indices[-1]}"


def handler_error(name: str, dataset: str, indices: Any, exc: BaseException) -> DataError:
    """The DataError for an exception raised inside a handler's function."""
    where = _rows_text(indices)
    message = str(exc)
    if len(message) > 1000:
        message = message[:1000] + "..."
    detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return DataError(
        f"data handler '{name}' failed on dataset '{dataset}'{', ' + where if where else ''}: "
        f"{detail}. Fix the handler or the data."
    )


def _handler_name(fn: HandlerFn) -> str:
    info = getattr(fn, "__tuneforge_handler__", None)
    name = getattr(info, "name", None)
    return name if isinstance(name, str) else getattr(fn, "__qualname__", repr(fn))


def _call(
    batch: Any,
    _handler: HandlerFn,
    _args: BaseModel,
    _ctx: HandlerContext,
    _code: str = "",
    _kept: tuple[str, ...] | None = None,
    _name: str = "",
    _indices: Any = None,
) -> Any:
    # `_kept` (batched map on a Dataset only): input columns that stay. An Arrow table replaces
    # the whole row, so it is used only when the output also rewrites every one of those.
    # An exception from the handler (or from turning its output into Arrow) becomes a DataError
    # naming the handler, the dataset and the rows; tuneforge's own errors pass unchanged.
    allowed = _kept is not None and ARROW_TYPES.keys() >= set(_kept)
    token = _ARROW_OUTPUT.set(allowed)
    try:
        output = _handler(batch, _args, _ctx)
        if not isinstance(output, dict) or not output:
            return output
        if allowed and ARROW_TYPES.keys() >= output.keys() and output.keys() >= set(_kept or ()):
            return _as_arrow(output)
        return _as_lists(output) if allowed else output
    except TuneforgeError:
        raise
    except Exception as exc:
        name = _name or _handler_name(_handler)
        raise handler_error(name, _ctx.dataset_name, _indices, exc) from exc
    finally:
        _ARROW_OUTPUT.reset(token)


def _call_at(batch: Any, indices: Any, **kwargs: Any) -> Any:
    """`_call` for datasets' map/filter with `with_indices=True`: the rows go into its errors."""
    return _call(batch, _indices=indices, **kwargs)


@functools.lru_cache(maxsize=256)
def _code_digest(fn: HandlerFn) -> str:
    """A digest of the handler's code: datasets hashes module functions by name only, so this
    is what makes its cache notice an edited handler.

    A built-in handler's output also depends on the helpers it calls (masking, chat rendering),
    so for those the digest covers every source file of `tuning.data`: upgrading tuneforge never
    serves data prepared by an older version.
    """
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        source = repr((code.co_code, code.co_consts)) if code else repr(fn)
    if getattr(fn, "__module__", "").startswith("tuning."):
        source += source_digest(Path(__file__).resolve().parents[1])
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def source_digest(folder: Path) -> str:
    """sha256 over the Python files under `folder`, by relative path and content."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def apply_handler(
    dataset: Dataset | IterableDataset, bound: BoundHandler, ctx: HandlerContext
) -> Dataset | IterableDataset:
    """Run one bound handler over a dataset with datasets' map/filter (or directly)."""
    from datasets import IterableDataset

    info, arguments = bound.info, bound.arguments
    if info.kind == "dataset":
        return info.fn(dataset, bound.args, ctx)
    streaming = isinstance(dataset, IterableDataset)
    options: dict[str, Any] = {
        "batched": info.batched_support,
        "fn_kwargs": {
            "_handler": info.fn,
            "_args": bound.args,
            "_ctx": ctx,
            "_code": _code_digest(info.fn),
            "_name": info.name,
        },
        "with_indices": True,
    }
    if info.batched_support and arguments.batch_size:
        options["batch_size"] = arguments.batch_size
    if not streaming:
        options["desc"] = f"{info.name} ({ctx.dataset_name})"
        if arguments.num_proc:
            options["num_proc"] = arguments.num_proc
    if info.kind == "filter":
        return dataset.filter(_call_at, **options)
    present = column_names(dataset)
    remove = arguments.remove_columns
    if remove == "all":
        remove = [c for c in present if c not in STAT_COLUMNS]
    elif remove:
        missing = [c for c in remove if c not in present]
        if missing:
            raise DataError(
                f"`{bound.where}.arguments.remove_columns`: dataset '{ctx.dataset_name}' has no "
                f"column {', '.join(repr(c) for c in missing)} at this step (columns: "
                f"{', '.join(present)}). Fix the names."
            )
    if not streaming and info.batched_support:
        options["fn_kwargs"]["_kept"] = tuple(c for c in present if c not in (remove or ()))
    return dataset.map(_call_at, remove_columns=remove or None, **options)


def apply_handler_spec(
    dataset: Dataset | IterableDataset,
    spec: HandlerSpec,
    ctx: HandlerContext,
    where: str = "data_handlers[0]",
) -> Dataset | IterableDataset:
    """Bind a data config's handler entry (name + arguments) and apply it in one call."""
    return apply_handler(dataset, bind_handler(spec.name, spec.arguments, where), ctx)


def apply_chain(
    dataset: Dataset | IterableDataset, chain: list[BoundHandler], ctx: HandlerContext
) -> Dataset | IterableDataset:
    """Apply a dataset's handlers in order."""
    for bound in chain:
        dataset = apply_handler(dataset, bound, ctx)
    return dataset
