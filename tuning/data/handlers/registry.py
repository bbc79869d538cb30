"""The data-handler registry: one function plus a typed arguments model per handler.

A handler is registered by name with `@register_handler`; a user's own handler is named by its
import path ("my_pkg.module:function") and validated the same way. Every handler receives an
explicit `HandlerContext` (tokenizer, max length, chat template) instead of things stuffed into
its keyword arguments, and its `fn_kwargs` are checked against its model before any data loads,
so a misspelt argument fails with its key path and a did-you-mean rather than being ignored.

This module imports no torch, transformers or datasets: preflight resolves and validates handler
names with it before anything heavy is loaded.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, ValidationError

from tuning.errors import ConfigError, DataError, UserError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset, IterableDataset

    from tuning.data.config_schema import DatasetSpec, HandlerArguments, HandlerSpec

logger = logging.getLogger(__name__)

Kind = Literal["map", "filter", "dataset"]
KINDS: tuple[str, ...] = ("map", "filter", "dataset")

# Per-row truncation counts written by the tokenizing handlers; the pipeline reads and drops them.
TRIMMED_PROMPT = "_tf_trimmed_prompt"
TRIMMED_RESPONSE = "_tf_trimmed_response"
STAT_COLUMNS: tuple[str, ...] = (TRIMMED_PROMPT, TRIMMED_RESPONSE)

_BUILTIN_MODULES = (
    "tuning.data.handlers.columns",
    "tuning.data.handlers.text",
    "tuning.data.handlers.tokenize",
)


class HandlerArgs(BaseModel):
    """Base of every handler's arguments model: unknown keys are errors.

    `reads` and `columns_after` let preflight follow the columns through a handler chain on the
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
    def doc(self) -> str:
        return inspect.cleandoc(self.fn.__doc__ or "")


_REGISTRY: dict[str, HandlerInfo] = {}
_ALIASES: dict[str, str] = {}
_WARNED: set[str] = set()
_BUILTINS_LOADED = False


def _check_model(model: Any, where: str) -> None:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"{where}: `arguments` must be a pydantic model class, not {model!r}.")
    if model.model_config.get("extra") != "forbid":
        raise ConfigError(
            f"{where}: its arguments model {model.__name__} must forbid unknown keys (subclass "
            "tuning.data.handlers.HandlerArgs, or set model_config = ConfigDict(extra='forbid')),"
            " so a misspelt fn_kwargs key is an error instead of being ignored."
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
        taken = _REGISTRY.get(name) or _REGISTRY.get(_ALIASES.get(name, ""))
        if taken is not None and _where(taken.fn) != _where(fn):
            raise ConfigError(
                f"data handler name '{name}' is already taken by {_where(taken.fn)}; register "
                f"{_where(fn)} under another name."
            )
        info = HandlerInfo(
            name=name,
            fn=fn,
            arguments=arguments,
            kind=kind,
            batched_support=batched_support,
            aliases=tuple(aliases),
            source="built in" if fn.__module__.startswith("tuning.") else fn.__module__,
        )
        _REGISTRY[name] = info
        for alias in aliases:
            _ALIASES[alias] = name
        fn.__tuneforge_handler__ = info  # type: ignore[attr-defined]
        return fn

    return decorate


def _where(fn: HandlerFn) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        _BUILTINS_LOADED = True


def available_handlers() -> dict[str, HandlerInfo]:
    """Every registered handler by name, built-ins first, sorted."""
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def _from_import_path(path: str) -> HandlerInfo:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(
            f"handler '{path}': an import path must look like 'package.module:function'."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"handler '{path}': cannot import module '{module_name}' ({exc}). Check the name and "
            "that the module is on PYTHONPATH."
        ) from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(
            f"handler '{path}': module '{module_name}' has no function '{attr}'."
            f"{did_you_mean(attr, names)}"
        )
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


def resolve_handler(name: str) -> HandlerInfo:
    """The handler for a registered name, a deprecated alias or a 'module:function' path."""
    if ":" in name:
        return _from_import_path(name)
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _ALIASES:
        current = _ALIASES[name]
        if name not in _WARNED:
            _WARNED.add(name)
            logger.warning(
                "Data handler '%s' is deprecated; it now runs as '%s'. Rename it in your data "
                "config.",
                name,
                current,
            )
        return _REGISTRY[current]
    known = sorted(_REGISTRY)
    raise ConfigError(
        f"unknown data handler '{name}'.{did_you_mean(name, [*known, *_ALIASES])} Available: "
        f"{', '.join(known)}; or give your own as 'package.module:function'."
    )


def _spellings(model: type[BaseModel]) -> dict[str, str]:
    """Every accepted key of a model -> its field name (aliases included)."""
    spellings: dict[str, str] = {}
    for name, info in model.model_fields.items():
        spellings[name] = name
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    spellings[choice] = name
        elif isinstance(alias, str):
            spellings[alias] = name
    return spellings


def _describe(error: Any, model: type[BaseModel], given: Mapping[str, Any]) -> tuple[str, str]:
    loc = ".".join(str(part) for part in error["loc"])
    key = str(error["loc"][0]) if error["loc"] else ""
    spellings = _spellings(model)
    if error["type"] == "extra_forbidden":
        field_name = spellings.get(key)
        if field_name is not None:
            others = [
                k for k, v in spellings.items() if v == field_name and k in given and k != key
            ]
            return loc, (
                f"is another spelling of '{field_name}', and {', '.join(others)} is also given; "
                "keep one."
            )
        hint = did_you_mean(key, list(spellings))
        return loc, (
            f"unknown argument (value {error['input']!r}).{hint} Arguments of this handler: "
            f"{', '.join(model.model_fields) or '(none)'}."
        )
    if error["type"] == "missing":
        return loc, "is required but missing; add it."
    message = str(error["msg"]).removeprefix("Value error, ")
    return loc, f"{message} (found {error['input']!r})."


def validate_fn_kwargs(info: HandlerInfo, fn_kwargs: Mapping[str, Any], where: str) -> BaseModel:
    """Check fn_kwargs against the handler's model.

    Errors name `<where>.arguments.fn_kwargs.<key>`, with a did-you-mean for unknown keys.
    """
    try:
        return info.arguments.model_validate(dict(fn_kwargs))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc, text = _describe(error, info.arguments, fn_kwargs)
            problems.append(f"`{where}.arguments.fn_kwargs.{loc}`: {text}")
        head = f"data handler '{info.name}': "
        if len(problems) == 1:
            raise ConfigError(head + problems[0]) from None
        numbered = " ".join(f"({i}) {p}" for i, p in enumerate(problems, start=1))
        raise ConfigError(f"{head}{len(problems)} problems: {numbered}") from None


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


# ---------------------------------------------------------------------------------------------
# applying a handler to a datasets Dataset / IterableDataset


def bind_dataset_chain(
    index: int, spec: DatasetSpec
) -> tuple[list[BoundHandler] | None, list[str]]:
    """Bind one dataset's steps in order, collecting every problem (chain None if any).

    The older dataset-level `rename_columns` / `retain_columns` keys run first, as the
    rename_columns and select_columns handlers, with their own key paths in messages.
    """
    from tuning.data.config_schema import OLDER_DATASET_KEYS, HandlerArguments, HandlerSpec

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


def _call(
    batch: Any,
    _handler: HandlerFn,
    _args: BaseModel,
    _ctx: HandlerContext,
    _code: str = "",
    _kept: tuple[str, ...] | None = None,
) -> Any:
    # `_kept` (batched map on a Dataset only): input columns that stay. An Arrow table replaces
    # the whole row, so it is used only when the output also rewrites every one of those.
    allowed = _kept is not None and ARROW_TYPES.keys() >= set(_kept)
    token = _ARROW_OUTPUT.set(allowed)
    try:
        output = _handler(batch, _args, _ctx)
    finally:
        _ARROW_OUTPUT.reset(token)
    if not isinstance(output, dict) or not output:
        return output
    if allowed and ARROW_TYPES.keys() >= output.keys() and output.keys() >= set(_kept or ()):
        return _as_arrow(output)
    return _as_lists(output) if allowed else output


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
        },
    }
    if info.batched_support and arguments.batch_size:
        options["batch_size"] = arguments.batch_size
    if not streaming:
        options["desc"] = f"{info.name} ({ctx.dataset_name})"
        if arguments.num_proc:
            options["num_proc"] = arguments.num_proc
    if info.kind == "filter":
        return dataset.filter(_call, **options)
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
    return dataset.map(_call, remove_columns=remove or None, **options)


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


# ---------------------------------------------------------------------------------------------
# documentation

_INTRO = """\
# Data handlers

Handlers turn a dataset's rows into what the model trains on. A data config lists them per
dataset under `data_handlers`, each with a `name` and `arguments`; `arguments.fn_kwargs` holds the
handler's own arguments (tables below), the other `arguments` keys (`batched`, `batch_size`,
`num_proc`, `remove_columns`) go to `datasets` map/filter. Unknown `fn_kwargs` keys are errors.

```yaml
datasets:
  - name: my_data
    data_paths: [data/train.jsonl]
    data_handlers:
      - name: tokenize_and_apply_input_masking
        arguments:
          remove_columns: all
          fn_kwargs:
            input_column_name: input
            output_column_name: output
```

Tokenizing handlers write `input_ids` and `labels` (-100 where no loss is taken); loss masks come
from the rendered text's character offsets. A sample longer than the maximum length keeps its
response and loses prompt tokens from the left; how many were trimmed is reported.

**Your own handler**: decorate a function `fn(batch_or_row, args, ctx)` with
`@tuning.data.handlers.register_handler("name", arguments=MyArgs, kind="map",
batched_support=True)`, where `MyArgs` subclasses `tuning.data.handlers.HandlerArgs` (a pydantic
model that forbids unknown keys), and name it in the data config by import path,
`name: my_package.my_module:fn`. `ctx` is a `HandlerContext` with `tokenizer`,
`max_seq_length`, `dataset_name`, `chat_template` and `special_tokens`. A map handler returns a
dict of columns, a filter returns a bool (a list of bools for a batch). With `batched_support`
the function always receives batches (a dict of lists).
"""


def _type_text(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "")
    return text.replace("NoneType", "None")


def _argument_rows(model: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    from pydantic_core import PydanticUndefined

    rows = []
    for name, info in model.model_fields.items():
        shown = f"`{name}`"
        alias = info.validation_alias
        others = (
            [c for c in alias.choices if isinstance(c, str) and c != name]
            if isinstance(alias, AliasChoices)
            else []
        )
        if others:
            shown += " (also " + ", ".join(f"`{o}`" for o in others) + ")"
        if info.default is PydanticUndefined and info.default_factory is None:
            default = "required"
        else:
            value = info.get_default(call_default_factory=True)
            default = "unset" if value is None else f"`{value!r}`"
        rows.append((shown, _type_text(info.annotation), default, info.description or ""))
    return rows


def render_handlers_markdown() -> str:
    """docs/handlers.md, generated from the registry so it cannot drift from the code."""
    from tuning.docs_gen import GENERATED_NOTE, _cell, _table

    lines = [GENERATED_NOTE, "", _INTRO.rstrip("\n")]
    for name, info in available_handlers().items():
        lines += ["", f"## `{name}`", ""]
        facts = [f"kind: {info.kind}", f"batched: {'yes' if info.batched_support else 'no'}"]
        if info.aliases:
            facts.append("deprecated names: " + ", ".join(f"`{alias}`" for alias in info.aliases))
        lines += ["; ".join(facts) + ".", ""]
        for paragraph in info.doc.split("\n\n"):
            if paragraph.strip():
                lines += [" ".join(paragraph.split()), ""]
        rows = _argument_rows(info.arguments)
        if rows:
            lines += _table(
                ("argument", "type", "default", "description"),
                [(a, _cell(t), d, _cell(desc)) for a, t, d, desc in rows],
            )
        else:
            lines.append("No arguments.")
    return "\n".join(lines) + "\n"
