"""The data-handler registry: one function plus a typed arguments model per handler.

A handler is registered by name with `@register_handler`; a user's own handler is named by its
import path ("my_pkg.module:function") and validated the same way. Every handler receives an
explicit `HandlerContext` (tokenizer, max length, chat template) instead of things stuffed into
its keyword arguments. Binding (validating a chain's arguments) lives in binding.py, running a
chain over a dataset in apply.py.

This module imports no torch, transformers or datasets: planning resolves handler names with it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tuning.errors import ConfigError
from tuning.registry import Registry

Kind = Literal["map", "filter", "dataset"]
KINDS: tuple[str, ...] = ("map", "filter", "dataset")

# Per-row truncation counts written by the tokenizing handlers; the pipeline reads and drops them.
TRIMMED_PROMPT = "_tf_trimmed_prompt"
TRIMMED_RESPONSE = "_tf_trimmed_response"
STAT_COLUMNS: tuple[str, ...] = (TRIMMED_PROMPT, TRIMMED_RESPONSE)


class HandlerArgs(BaseModel):
    """Base of every handler's arguments model: unknown keys are errors.

    `reads` and `columns_after` let planning follow the columns through a handler chain on the
    first rows without running it; a handler that cannot say returns None from `columns_after`.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    def reads(self) -> list[str]:
        """Columns the handler needs in its input rows."""
        return []

    def writes(self) -> list[str]:
        """Columns the handler adds (or overwrites)."""
        return []

    def columns_after(self, columns: list[str], removed: list[str] | None) -> list[str] | None:
        """The columns after the handler, given those before and what `remove_columns` drops."""
        kept = [c for c in columns if c not in (removed or [])]
        return kept + [c for c in self.writes() if c not in kept]


@dataclass(frozen=True)
class HandlerContext:
    """What a handler may use besides its arguments; built once per dataset."""

    tokenizer: Any
    max_seq_length: int | None
    dataset_name: str
    chat_template: str | None = None
    special_tokens: Mapping[str, str] = field(default_factory=dict)
    # Text the tokenizer would put in front of a plain text by itself (e.g. "<s>" for Llama);
    # rendered texts are tokenized without specials, so handlers prepend this instead.
    bos_text: str = ""


HandlerFn = Callable[..., Any]


@dataclass(frozen=True)
class HandlerInfo:
    """A registered handler: its function, arguments model and how it is applied."""

    name: str
    fn: HandlerFn
    arguments: type[HandlerArgs] | type[BaseModel]
    kind: Kind = "map"
    batched_support: bool = False
    aliases: tuple[str, ...] = ()
    source: str = "built in"

    @property
    def origin(self) -> str:
        return f"{self.fn.__module__}:{self.fn.__qualname__}"

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.fn.__doc__ or "")


def _check_model(model: Any, where: str) -> None:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"{where}: `arguments` must be a pydantic model class, not {model!r}.")
    if model.model_config.get("extra") != "forbid":
        raise ConfigError(
            f"{where}: its arguments model {model.__name__} must forbid unknown keys (subclass "
            "tuning.data.handlers.HandlerArgs, or set model_config = ConfigDict(extra='forbid')),"
            " so a misspelt fn_kwargs key is an error instead of being ignored."
        )


def _from_import_path(path: str, fn: Any) -> HandlerInfo:
    module_name = path.partition(":")[0]
    if not callable(fn):
        raise ConfigError(f"handler '{path}': '{path}' is not a function.")
    info = getattr(fn, "__tuneforge_handler__", None)
    if isinstance(info, HandlerInfo):
        return info
    model = getattr(fn, "arguments", None)
    if model is None:
        raise ConfigError(
            f"handler '{path}': the function is not a data handler. Decorate it with "
            "@tuning.data.handlers.register_handler(name, arguments=YourArgs), or give it an "
            "`arguments` attribute holding a pydantic model of its fn_kwargs."
        )
    _check_model(model, f"handler '{path}'")
    kind = getattr(fn, "kind", "map")
    if kind not in KINDS:
        raise ConfigError(
            f"handler '{path}': kind must be one of {', '.join(KINDS)}, not {kind!r}."
        )
    return HandlerInfo(
        name=path,
        fn=fn,
        arguments=model,
        kind=kind,
        batched_support=bool(getattr(fn, "batched_support", False)),
        source=module_name,
    )


HANDLERS: Registry[HandlerInfo] = Registry(
    "data handler",
    builtins=(
        "tuning.data.handlers.columns",
        "tuning.data.handlers.text",
        "tuning.data.handlers.tokenize",
    ),
    from_import_path=_from_import_path,
)


def register_handler(
    name: str,
    *,
    arguments: type[BaseModel],
    kind: Kind = "map",
    batched_support: bool = False,
    aliases: tuple[str, ...] = (),
) -> Callable[[HandlerFn], HandlerFn]:
    """Register `fn(batch_or_row, args, ctx)` under `name`.

    kind "map" returns a dict of columns, "filter" returns a bool (a list of bools for a batch),
    "dataset" receives and returns the whole Dataset/IterableDataset (column operations).
    With `batched_support` the function always receives batches (dict of lists); otherwise one
    row. `aliases` are older names that still work, with one deprecation notice.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    _check_model(arguments, f"handler '{name}'")

    def decorate(fn: HandlerFn) -> HandlerFn:
        info = HandlerInfo(
            name=name,
            fn=fn,
            arguments=arguments,
            kind=kind,
            batched_support=batched_support,
            aliases=tuple(aliases),
            source="built in" if fn.__module__.startswith("tuning.") else fn.__module__,
        )
        HANDLERS.add(info, info.origin)
        fn.__tuneforge_handler__ = info  # type: ignore[attr-defined]
        return fn

    return decorate


def available_handlers() -> dict[str, HandlerInfo]:
    """Every registered handler by name, sorted."""
    return HANDLERS.entries()


def resolve_handler(name: str) -> HandlerInfo:
    """The handler for a registered name, a deprecated alias or a 'module:function' path."""
    return HANDLERS.resolve(name)
