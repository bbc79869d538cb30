"""One way to collect user-fixable problems and to word them, so a job hears about all of them
at once, each naming the key as the user wrote it, the value found and the fix.

`Problems` collects; `numbered` is the one message format; `translate` turns a pydantic
ValidationError into problems against the user's own keys (union tags dropped, did-you-mean
for unknown keys, aliases understood).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

from pydantic import AliasChoices, BaseModel, ValidationError

from tuning.errors import ConfigError, did_you_mean

Loc = tuple[str | int, ...]


class NestedProblems(ValueError):
    """Raised inside a validator to report several problems at sub-keys of the validated model."""

    def __init__(self, problems: list[tuple[Loc, str, Any]]):
        super().__init__("; ".join(message for _, message, _ in problems))
        self.problems = problems


def numbered(heading: str, problems: list[str]) -> str:
    """The message format every layer uses: one problem inline, several numbered."""
    if len(problems) == 1:
        return f"{heading}: {problems[0]}"
    listed = " ".join(f"({i}) {p}" for i, p in enumerate(problems, start=1))
    return f"{heading} has {len(problems)} problems: {listed}"


class Problems:
    """Collects problems from every layer; raises one ConfigError listing them all."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, problem: str | None) -> None:
        if problem:
            self.items.append(problem)

    def extend(self, problems: Iterable[str]) -> None:
        for problem in problems:
            self.add(problem)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self, heading: str = "The job") -> None:
        if self.items:
            raise ConfigError(numbered(heading, list(dict.fromkeys(self.items))))


def show(value: Any) -> str:
    """A value as the user would recognise it, cut to one line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def dotted(loc: Loc) -> str:
    """('datasets', 0, 'name') -> 'datasets[0].name'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def spellings(model: type[BaseModel]) -> dict[str, str]:
    """Every accepted key of a model (aliases included) -> its field name."""
    found: dict[str, str] = {}
    for name, info in model.model_fields.items():
        found[name] = name
        alias = info.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        for choice in choices:
            if isinstance(choice, str):
                found[choice] = name
    return found


def _user_loc(loc: Loc, data: Any, keep_last: bool) -> Loc:
    """The part of pydantic's location that exists in the user's input (drops union tags)."""
    kept: list[str | int] = []
    current = data
    for position, part in enumerate(loc):
        in_dict = isinstance(current, Mapping) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_dict or in_list:
            current = current[part]
        elif not (keep_last and position == len(loc) - 1 and isinstance(part, str)):
            continue  # a pydantic union tag such as "list[str]", not a key the user wrote
        kept.append(part)
    return tuple(kept)


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, dict, Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _find_model(arg)
            if found is not None:
                return found
    return None


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The schema model that owns the keys at `loc`, for did-you-mean suggestions."""
    model = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        found = _find_model(field.annotation) if field is not None else None
        if found is None:
            return None
        model = found
    return model


def _unknown_key(
    loc: Loc, value: Any, root: type[BaseModel], given: Any, hints: Mapping[type, str]
) -> str:
    key = str(loc[-1]) if loc else ""
    model = _model_at(root, loc[:-1])
    if model is None:
        return f"unknown key (value {show(value)})."
    known = spellings(model)
    parent = given
    for part in loc[:-1]:
        parent = parent[part] if isinstance(parent, (Mapping, list)) else None
    field = known.get(key)
    if field is not None and isinstance(parent, Mapping):
        others = [k for k, v in known.items() if v == field and k in parent and k != key]
        return f"is another spelling of '{field}', and {', '.join(others)} is also given; keep one."
    fields = [name for name in model.model_fields if not name.startswith("source")]
    hint = did_you_mean(key, list(known))
    text = f"unknown key (value {show(value)}).{hint}"
    if not hint and model in hints:
        text += f" {hints[model]}"
    return text + (f" Allowed keys here: {', '.join(fields)}." if fields else "")


def translate(
    exc: ValidationError,
    root: type[BaseModel],
    given: Any,
    path: Callable[[Loc], str] = lambda loc: f"`{dotted(loc)}`",
    hints: Mapping[type, str] | None = None,
) -> list[str]:
    """Each pydantic error as '<path as the user wrote it>: <what is wrong> (found <value>).'"""
    lines: dict[str, list[str]] = {}
    for error in exc.errors():
        kind = error["type"]
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, NestedProblems):
            base = _user_loc(tuple(error["loc"]), given, keep_last=False)
            for loc, message, value in cause.problems:
                found = "" if value is None else f" (found {show(value)})"
                lines.setdefault(path(base + loc), []).append(f"{message}{found}.")
            continue
        loc = _user_loc(
            tuple(error["loc"]), given, keep_last=kind in ("missing", "extra_forbidden")
        )
        if kind == "extra_forbidden":
            text = _unknown_key(loc, error["input"], root, given, hints or {})
        elif kind == "missing":
            text = "is required but missing; add it."
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            text = f"{message} (found {show(error['input'])})."
        lines.setdefault(path(loc), []).append(text)
    return [f"{where}: {' / '.join(dict.fromkeys(texts))}" for where, texts in lines.items()]
