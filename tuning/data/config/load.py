"""Read a data config file, resolve its paths, migrate older fms shapes, and validate it.

Every problem is reported at once, each with the key path as the user wrote it (see
tuning.problems.translate).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tuning.data.config.migrate import move_top_level_chat_template, notice_older_shapes
from tuning.data.config.schema import (
    DataConfig,
    HandlerArguments,
)
from tuning.errors import ConfigError
from tuning.problems import numbered, translate

logger = logging.getLogger(__name__)
_HINTS = {HandlerArguments: "Handler-specific arguments go under fn_kwargs."}


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
    problems = move_top_level_chat_template(raw)
    if "source_path" in raw:  # a model field, but only the loader may set it
        raw.pop("source_path")
        problems.append("`source_path`: unknown key; it is set by tuneforge. Remove it.")
    try:
        config = DataConfig.model_validate(raw)
    except ValidationError as exc:
        problems += translate(exc, DataConfig, raw, hints=_HINTS)
    if problems:
        raise ConfigError(numbered(f"Data config {config_path}", problems))
    config.source_path = config_path
    notice_older_shapes(config)
    return config
