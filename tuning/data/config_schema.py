"""The data config (fms-hf-tuning's `--data_config_path` YAML), as a strict pydantic schema.

fms accepts any key and ignores what it does not know; a misspelt key then silently runs with
defaults. Here every level forbids unknown keys, and `load_data_config` reports every problem
at once, with the key path as the user wrote it, the value found and the fix.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tuning.data.sources import SUPPORTED_BUILDERS
from tuning.errors import ConfigError, did_you_mean

SUM_TOLERANCE = 1e-6

Loc = tuple[str | int, ...]


TEMPLATE_KEYS = ("chat_template", "chat_template_path", "chat_template_base64")
# Older fms dataset-level keys -> the handler that does the same, and its argument
OLDER_DATASET_KEYS = {
    "rename_columns": ("rename_columns", "column_mapping"),
    "retain_columns": ("select_columns", "column_names"),
}
logger = logging.getLogger(__name__)


class ConfigProblems(ValueError):
    """Several cross-field problems from one validator, each with its own key path."""

    def __init__(self, problems: list[tuple[Loc, str, Any]]):
        super().__init__("; ".join(message for _, message, _ in problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class HandlerArguments(_Strict):
    """What goes to `datasets.map`/`filter` for one handler (fms's `arguments`)."""

    fn_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the handler itself (column names, template, ...).",
    )
    batched: bool = Field(False, description="Call the handler on batches of rows.")
    batch_size: int | None = Field(
        None, ge=1, description="Rows per batch when `batched`; unset uses datasets' 1000."
    )
    remove_columns: list[str] | Literal["all"] | None = Field(
        None,
        description='Columns to drop after the handler: a list, one name, or "all" (every '
        "column the dataset had before the handler).",
    )
    num_proc: int | None = Field(
        None, ge=1, description="Worker processes for this handler; unset runs in-process."
    )

    @field_validator("remove_columns", mode="before")
    @classmethod
    def _one_column_is_a_list(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "all":
            return [value]
        if value is not None and not (
            value == "all" or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            raise ValueError('must be a list of column names, one column name, or "all"')
        return value


class HandlerSpec(_Strict):
    """One data handler step; names and fn_kwargs are checked by the handler registry."""

    name: str = Field(description="Registered handler name, e.g. tokenize_and_apply_input_masking.")
    arguments: HandlerArguments = Field(
        default_factory=HandlerArguments, description="Arguments for datasets map/filter."
    )


class SplitSpec(_Strict):
    """Fractions of one dataset used for training and validation (the rest is unused)."""

    train: float = Field(
        0.0, ge=0.0, le=1.0, description="Fraction of rows for training; omitted means 0."
    )
    validation: float = Field(
        0.0, ge=0.0, le=1.0, description="Fraction of rows for validation; omitted means 0."
    )

    @model_validator(mode="after")
    def _sum_at_most_one(self) -> SplitSpec:
        total = self.train + self.validation
        if total > 1.0 + SUM_TOLERANCE:
            raise ValueError(f"train + validation is {total:g}, more than 1; lower one of them")
        if total <= 0.0:
            raise ValueError(
                "train and validation are both 0, so this dataset gives no rows; set one of them"
            )
        return self


class DatasetSpec(_Strict):
    """One source of rows: files, how to read them and the handlers to run on them."""

    name: str = Field(min_length=1, description="Unique name, used in logs and reports.")
    data_paths: list[str] = Field(
        min_length=1,
        description="Files, folders, globs or save_to_disk folders; relative to the config file.",
    )
    builder: str | None = Field(
        None,
        description=f"Reader: one of {', '.join(SUPPORTED_BUILDERS)}; unset detects it from "
        "the file extensions.",
    )
    sampling: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Share of this dataset in the training mix; all given shares must sum to 1.",
    )
    split: SplitSpec | None = Field(None, description="Train/validation fractions of this dataset.")
    dataset_split_name: str | None = Field(
        None, description='Split to read from a saved DatasetDict, e.g. "train_sft".'
    )
    shuffle: bool | None = Field(
        None,
        description="Shuffle this dataset's rows with the seed before splitting. Unset: "
        "shuffled when split gives part of the rows to validation or leaves some unused (as "
        "fms does), else kept in order. false: splits take contiguous rows.",
    )

    data_handlers: list[HandlerSpec] = Field(
        default_factory=list, description="Handlers applied in order."
    )
    rename_columns: dict[str, str] | None = Field(
        None,
        description="Older fms shape, kept so old configs run: {old: new} column renames done "
        "before data_handlers. Prefer a rename_columns handler.",
    )
    retain_columns: list[str] | None = Field(
        None,
        description="Older fms shape, kept so old configs run: the columns to keep, after "
        "rename_columns and before data_handlers. Prefer a select_columns handler.",
    )

    @field_validator("data_paths", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("builder")
    @classmethod
    def _known_builder(cls, value: str | None) -> str | None:
        if value is not None and value not in SUPPORTED_BUILDERS:
            raise ValueError(
                f"unknown builder.{did_you_mean(value, SUPPORTED_BUILDERS)} Use one of "
                f"{', '.join(SUPPORTED_BUILDERS)}, or remove it to detect the format"
            )
        return value

    def shuffled(self) -> bool:
        """Whether the rows are shuffled: the explicit setting, else only for a real split."""
        if self.shuffle is not None:
            return self.shuffle
        return self.split is not None and self.split.train < 1.0

    def trains(self) -> bool:
        """Whether any of this dataset's rows go to training."""
        return self.split is None or self.split.train > 0.0


def _decode_base64(text: str) -> str:
    raw = "".join(text.split())
    return base64.b64decode(raw, validate=True).decode("utf-8")


class DataProcessorSpec(_Strict):
    """How the datasets are combined (fms's `dataprocessor`), plus tuneforge's audit settings."""

    type: Literal["default", "odm"] = Field(
        "default", description='"default"; "odm" (online data mixing) is not built yet.'
    )
    streaming: bool = Field(False, description="Stream rows instead of loading them all.")
    seed: int = Field(42, description="Seed for sampling, shuffling and splitting.")
    sampling_stopping_strategy: Literal["all_exhausted", "first_exhausted"] = Field(
        "all_exhausted",
        description="When sampling stops: after every dataset is used up (oversampling the "
        "small ones) or as soon as the first one is.",
    )
    chat_template: str | None = Field(None, description="Jinja chat template text.")
    chat_template_path: str | None = Field(
        None, description="File holding the chat template; relative to the config file."
    )
    chat_template_base64: str | None = Field(
        None, description="Chat template as base64 of UTF-8 text."
    )
    audit_sample_size: int = Field(
        64, ge=0, description="Rows per dataset whose loss mask is cross-checked by the audit."
    )
    max_zero_label_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Largest fraction of rows with no trained token before the run aborts.",
    )
    odm: dict[str, Any] | None = Field(
        None, description="Online data mixing settings (accepted so fms configs parse)."
    )

    @field_validator("chat_template_base64")
    @classmethod
    def _valid_base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                _decode_base64(value)
            except (binascii.Error, ValueError) as exc:
                reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
                raise ValueError(
                    f"does not decode as base64 of UTF-8 text ({reason}). Encode the template "
                    "with `base64 -w0 template.jinja`, or use chat_template / "
                    "chat_template_path instead"
                ) from None
        return value

    @model_validator(mode="after")
    def _one_template(self) -> DataProcessorSpec:
        given = [key for key in TEMPLATE_KEYS if getattr(self, key) is not None]
        if len(given) > 1:
            raise ConfigProblems(
                [
                    (
                        (given[1],),
                        f"only one chat template may be given, but {' and '.join(given)} are "
                        "both set; keep one",
                        getattr(self, given[1]),
                    )
                ]
            )
        return self


class DataConfig(_Strict):
    """The whole data config file."""

    dataprocessor: DataProcessorSpec = Field(
        default_factory=DataProcessorSpec, description="How datasets are combined."
    )
    datasets: list[DatasetSpec] = Field(min_length=1, description="The datasets to train on.")
    source_path: Path | None = Field(
        None, exclude=True, description="The file this config was read from (set by the loader)."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> DataConfig:
        problems: list[tuple[Loc, str, Any]] = []
        seen: dict[str, int] = {}
        for index, dataset in enumerate(self.datasets):
            if dataset.name in seen:
                problems.append(
                    (
                        ("datasets", index, "name"),
                        f"repeats the name of datasets[{seen[dataset.name]}]; give each "
                        "dataset a unique name",
                        dataset.name,
                    )
                )
            seen.setdefault(dataset.name, index)
        sampled = [(i, d) for i, d in enumerate(self.datasets) if d.sampling is not None]
        if sampled:
            for index, dataset in enumerate(self.datasets):
                if dataset.sampling is None and dataset.trains():
                    problems.append(
                        (
                            ("datasets", index, "sampling"),
                            "is missing while other datasets set sampling; every dataset "
                            "that trains needs a sampling share (a dataset whose split has "
                            "train 0 may omit it)",
                            None,
                        )
                    )
            total = sum(d.sampling or 0.0 for _, d in sampled)
            if abs(total - 1.0) > SUM_TOLERANCE:
                shares = " + ".join(f"{d.sampling:g}" for _, d in sampled)
                problems.append(
                    (
                        ("datasets",),
                        f"sampling shares must sum to 1, but {shares} = {total:g}; adjust them",
                        total,
                    )
                )
        if problems:
            raise ConfigProblems(problems)
        return self

    def resolved_chat_template(self) -> str | None:
        """The chat template text, from whichever of the three keys was given."""
        spec = self.dataprocessor
        if spec.chat_template is not None:
            return spec.chat_template
        if spec.chat_template_base64 is not None:
            return _decode_base64(spec.chat_template_base64)
        if spec.chat_template_path is None:
            return None
        path = Path(spec.chat_template_path).expanduser()
        if not path.is_absolute() and self.source_path is not None:
            path = self.source_path.parent / path
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            where = f" in {self.source_path}" if self.source_path else ""
            raise ConfigError(
                f"dataprocessor.chat_template_path{where}: cannot read '{path}' ({exc}). Fix "
                "the path; a relative path is relative to the config file's folder."
            ) from exc


# ---------------------------------------------------------------------------------------------
# loading and error reporting


def _resolve_relative(entry: str, base: Path) -> str:
    expanded = os.path.expanduser(entry)
    return expanded if os.path.isabs(expanded) else os.path.normpath(base / expanded)


def _resolve_paths_in(raw: dict[str, Any], base: Path) -> None:
    """Make relative paths relative to the config's folder (fms uses the cwd; we don't)."""
    processor = raw.get("dataprocessor")
    if isinstance(processor, dict) and isinstance(processor.get("chat_template_path"), str):
        processor["chat_template_path"] = _resolve_relative(processor["chat_template_path"], base)
    datasets = raw.get("datasets")
    if not isinstance(datasets, list):
        return
    for dataset in datasets:
        if not isinstance(dataset, dict):
            continue
        paths = dataset.get("data_paths")
        if isinstance(paths, str):
            dataset["data_paths"] = _resolve_relative(paths, base)
        elif isinstance(paths, list):
            dataset["data_paths"] = [
                _resolve_relative(p, base) if isinstance(p, str) else p for p in paths
            ]


def _format_loc(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _user_loc(loc: Loc, data: Any, keep_last: bool) -> Loc:
    """The part of pydantic's location that exists in the user's input (drops union tags)."""
    kept: list[str | int] = []
    current = data
    for position, part in enumerate(loc):
        in_dict = isinstance(current, dict) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_dict or in_list:
            current = current[part]
        elif not (keep_last and position == len(loc) - 1 and isinstance(part, str)):
            continue  # a pydantic union tag such as "list[str]", not a key the user wrote
        kept.append(part)
    return tuple(kept)


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The schema model that owns the keys at `loc`, for did-you-mean suggestions."""
    model: type[BaseModel] = DataConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        found = _find_model(field.annotation)
        if found is None:
            return None
        model = found
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _find_model(arg)
            if found is not None:
                return found
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(error: Any, data: Any) -> tuple[Loc, str]:
    kind = error["type"]
    loc = _user_loc(tuple(error["loc"]), data, keep_last=kind == "missing")
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        model = _model_at(loc[:-1])
        known = sorted(model.model_fields) if model else []
        known = [k for k in known if k != "source_path"]
        hint = did_you_mean(key, known)
        text = f"unknown key (value {_show(error['input'])}).{hint}"
        if model is HandlerArguments and not hint:
            text += " Handler-specific arguments go under fn_kwargs."
        if known:
            text += f" Allowed keys here: {', '.join(known)}."
        return loc, text
    if kind == "missing":
        return loc, "is required but missing; add it."
    message = error["msg"].removeprefix("Value error, ")
    return loc, f"{message} (found {_show(error['input'])})."


def _problems(exc: ValidationError, data: Any) -> list[str]:
    lines: dict[str, list[str]] = {}
    for error in exc.errors():
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigProblems):
            base = _user_loc(tuple(error["loc"]), data, keep_last=False)
            for loc, message, value in cause.problems:
                shown = "" if value is None else f" (found {_show(value)})"
                lines.setdefault(_format_loc(base + loc), []).append(f"{message}{shown}.")
            continue
        loc, text = _describe(error, data)
        lines.setdefault(_format_loc(loc), []).append(text)
    return [f"`{path}`: {' / '.join(dict.fromkeys(texts))}" for path, texts in lines.items()]


def _config_error(path: Path, problems: list[str]) -> ConfigError:
    if len(problems) == 1:
        return ConfigError(f"Data config {path}: {problems[0]}")
    numbered = " ".join(f"({i}) {p}" for i, p in enumerate(problems, start=1))
    return ConfigError(f"Data config {path} has {len(problems)} problems: {numbered}")


def _read(path: Path) -> Any:
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"Data config {path} {what}. Check --data_config_path; a relative path is "
            "relative to the working directory."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Data config {path} cannot be read: {exc}.") from exc
    if not text.strip():
        raise ConfigError(
            f"Data config {path} is empty. It needs at least a `datasets:` list; see "
            "docs/data-config.md."
        )
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"Data config {path} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                f"column {exc.colno}. Fix the syntax there."
            ) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"Data config {path} is not valid YAML{where}: {problem}. Fix the syntax there "
            "(check indentation and quote values that contain ':' or '#')."
        ) from exc


def _move_top_level_chat_template(raw: dict[str, Any]) -> list[str]:
    """Older fms configs put `chat_template` at the top level; it belongs to `dataprocessor`."""
    if "chat_template" not in raw:
        return []
    template = raw.pop("chat_template")
    processor = raw.setdefault("dataprocessor", {})
    if not isinstance(processor, dict):
        return []  # the schema reports the bad dataprocessor
    given = [key for key in TEMPLATE_KEYS if processor.get(key) is not None]
    if given:
        return [
            f"`chat_template` at the top level and `dataprocessor.{given[0]}` both set a chat "
            "template. Keep one: the top-level key is the older shape of "
            "dataprocessor.chat_template."
        ]
    _notice_once(
        "Data config: top-level `chat_template` is the older fms-hf-tuning shape; it is used as "
        "dataprocessor.chat_template. Move it there."
    )
    processor["chat_template"] = template
    return []


def _notice_older_shapes(config: DataConfig) -> None:
    for i, spec in enumerate(config.datasets):
        for key, (handler, _) in OLDER_DATASET_KEYS.items():
            if getattr(spec, key) is not None:
                _notice_once(
                    f"Data config: `datasets[{i}].{key}` ({spec.name}) is the older "
                    f"fms-hf-tuning shape; it runs as a {handler} handler before the "
                    "data_handlers. Move it into data_handlers."
                )


_NOTICED: set[str] = set()


def _notice_once(message: str) -> None:
    """The config is read more than once per run (preflight, then preparation): say it once."""
    if message not in _NOTICED:
        _NOTICED.add(message)
        logger.warning(message)


def load_data_config(path: str | Path) -> DataConfig:
    """Read, resolve and validate a data config, raising one ConfigError with every problem."""
    config_path = Path(os.path.abspath(Path(path).expanduser()))
    raw = _read(config_path)
    if raw is None:
        raise ConfigError(
            f"Data config {config_path} has no settings, only comments. It needs at least a "
            "`datasets:` list; see docs/data-config.md."
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"Data config {config_path} must be a mapping with a `datasets:` list at the top "
            f"level, but it is a {type(raw).__name__}."
        )
    _resolve_paths_in(raw, config_path.parent)
    problems = _move_top_level_chat_template(raw)
    if "source_path" in raw:  # a model field, but only the loader may set it
        raw.pop("source_path")
        problems.append("`source_path`: unknown key; it is set by tuneforge. Remove it.")
    try:
        config = DataConfig.model_validate(raw)
    except ValidationError as exc:
        problems += _problems(exc, raw)
    if problems:
        raise _config_error(config_path, problems)
    config.source_path = config_path
    _notice_older_shapes(config)
    return config


# ---------------------------------------------------------------------------------------------
# documentation


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"  # documented in its own table
    if isinstance(annotation, type):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is dict:
        return "mapping"
    return str(annotation).replace("typing.", "")


def _default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return "{}" if isinstance(value, (dict, BaseModel)) else json.dumps(value)
    return "null" if field.default is None else json.dumps(field.default)


DOC_MODELS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("top level", DataConfig),
    ("dataprocessor", DataProcessorSpec),
    ("datasets[]", DatasetSpec),
    ("datasets[].split", SplitSpec),
    ("datasets[].data_handlers[]", HandlerSpec),
    ("datasets[].data_handlers[].arguments", HandlerArguments),
)


def dump_schema_markdown() -> str:
    """The key reference for docs/data-config.md, generated so the docs cannot drift."""
    out = [
        "<!-- generated by tuning.data.config_schema.dump_schema_markdown; do not edit -->",
        "",
    ]
    for where, model in DOC_MODELS:
        out += [f"### `{where}`", "", (model.__doc__ or "").strip(), ""]
        out += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            out.append(
                f"| `{name}` | {_type_name(field.annotation)} | `{_default_text(field)}` "
                f"| {field.description or ''} |"
            )
        out.append("")
    return "\n".join(out)
