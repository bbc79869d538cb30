"""Bind a dataset's handler chain: resolve each name, validate its arguments, before any data
is read. Every problem names its key path as written in the data config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from tuning.data.config.schema import (
    OLDER_DATASET_KEYS,
    DatasetSpec,
    HandlerArguments,
    HandlerSpec,
)
from tuning.data.handlers.registry import HandlerInfo, resolve_handler
from tuning.errors import ConfigError, UserError
from tuning.problems import dotted, numbered, translate


def validate_fn_kwargs(info: HandlerInfo, fn_kwargs: Mapping[str, Any], where: str) -> BaseModel:
    """Check fn_kwargs against the handler's model.

    Errors name `<where>.arguments.fn_kwargs.<key>`, with a did-you-mean for unknown keys.
    """
    try:
        return info.arguments.model_validate(dict(fn_kwargs))
    except ValidationError as exc:
        problems = translate(
            exc,
            info.arguments,
            dict(fn_kwargs),
            path=lambda loc: f"`{where}.arguments.fn_kwargs.{dotted(loc)}`",
        )
        raise ConfigError(numbered(f"data handler '{info.name}'", problems)) from None


def check_arguments(info: HandlerInfo, arguments: HandlerArguments, where: str) -> None:
    """Refuse map/filter settings that cannot apply to this handler."""
    if arguments.batched and not info.batched_support and info.kind != "dataset":
        raise ConfigError(
            f"`{where}.arguments.batched`: handler '{info.name}' takes one row at a time; "
            "remove `batched: true`."
        )
    if arguments.remove_columns is not None and info.kind != "map":
        raise ConfigError(
            f"`{where}.arguments.remove_columns`: handler '{info.name}' is a {info.kind} handler "
            "and adds no columns, so remove_columns does not apply; use the remove_columns "
            "handler instead."
        )


@dataclass(frozen=True)
class BoundHandler:
    """A handler resolved and validated for one step of a dataset's chain."""

    info: HandlerInfo
    args: BaseModel
    arguments: HandlerArguments
    where: str


def bind_handler(name: str, arguments: HandlerArguments, where: str) -> BoundHandler:
    """Resolve a handler name and validate its arguments; `where` is its key path."""
    try:
        info = resolve_handler(name)
    except ConfigError as exc:
        raise ConfigError(f"`{where}.name`: {exc}") from None
    args = validate_fn_kwargs(info, arguments.fn_kwargs, where)
    check_arguments(info, arguments, where)
    return BoundHandler(info, args, arguments, where)


def bind_dataset_chain(
    index: int, spec: DatasetSpec
) -> tuple[list[BoundHandler] | None, list[str]]:
    """Bind one dataset's steps in order, collecting every problem (chain None if any).

    The older dataset-level `rename_columns` / `retain_columns` keys run first, as the
    rename_columns and select_columns handlers, with their own key paths in messages.
    """
    where = f"datasets[{index}]"
    steps: list[tuple[HandlerSpec, str]] = []
    for key, (handler, argument) in OLDER_DATASET_KEYS.items():
        value = getattr(spec, key)
        if value is not None:
            arguments = HandlerArguments(fn_kwargs={argument: value})
            steps.append((HandlerSpec(name=handler, arguments=arguments), f"{where}.{key}"))
    steps += [(h, f"{where}.data_handlers[{j}]") for j, h in enumerate(spec.data_handlers)]
    chain: list[BoundHandler] = []
    problems: list[str] = []
    for handler, step_where in steps:
        try:
            chain.append(bind_handler(handler.name, handler.arguments, step_where))
        except UserError as exc:
            problems.append(str(exc))
    return (None if problems else chain), problems
