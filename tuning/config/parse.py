"""Turn command-line flags or a JSON job into {canonical flag name: typed value}.

Strict on purpose: an unknown flag or key is an error with a did-you-mean, every problem is
reported in one message, and nothing is ever unpickled or evaluated.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tuning.config.schema import FlagSpec, alias_table, all_flags
from tuning.errors import ConfigError, did_you_mean
from tuning.problems import Problems, numbered

JSON_ENV_VAR = "SFT_TRAINER_CONFIG_JSON_ENV_VAR"
JSON_PATH_VAR = "SFT_TRAINER_CONFIG_JSON_PATH"
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NONE = {"none", "null"}


def decode_escapes(text: str) -> str:
    """Decode backslash escapes the way fms does, so '\\n### Response:' has a real newline."""
    if "\\" not in text:
        return text
    try:
        return codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape")
    except (UnicodeDecodeError, ValueError):
        return text


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("expected true or false")


def _as_scalar(kind: str, value: Any) -> Any:
    if kind == "bool":
        return _as_bool(value)
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise ValueError("expected a whole number")
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return float(value)
    if isinstance(value, (dict, list)):
        raise ValueError("expected a single text value")
    if isinstance(value, bool):  # JSON true for a text flag reads like the CLI's "true"
        return "true" if value else "false"
    return str(value)


def _is_choice(spec: FlagSpec, value: str) -> bool:
    """Whether the text is one of the flag's choices ('none' is one for peft_method)."""
    return bool(spec.choices) and value.strip().lower() in {str(c).lower() for c in spec.choices}


def convert_value(spec: FlagSpec, value: Any) -> Any:
    """Convert one raw value (CLI string(s) or JSON value) to the flag's type."""
    if (
        isinstance(value, str)
        and value.strip().lower() in _NONE
        and spec.kind not in {"bool", "list", "padding_free"}
        and not _is_choice(spec, value)
    ):
        return None
    if value is None:
        return None
    if spec.kind == "padding_free":
        items = value if isinstance(value, list) else [value]
        out: list[str] = []
        for item in items:
            if isinstance(item, bool) or (isinstance(item, str) and item.lower() in _TRUE | _FALSE):
                if _as_bool(item):
                    out.append("huggingface")
            elif item == "huggingface":
                out.append(item)
            else:
                raise ValueError("expected 'huggingface' or true/false")
        return out or None
    if spec.kind == "list":
        items = value if isinstance(value, list) else [value]
        if len(items) == 1 and isinstance(items[0], str) and items[0].strip().startswith("["):
            items = json.loads(items[0])
        return [_as_scalar("int" if spec.list_item == "int" else "str", v) for v in items]
    if spec.kind == "json":
        if isinstance(value, str):
            stripped = value.strip()
            if stripped.startswith(("{", "[")):
                return json.loads(stripped)
            return value
        return value
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"expected one value, got {len(value)}")
        value = value[0]
    converted = _as_scalar(spec.kind, value)
    if spec.unescape and isinstance(converted, str):
        converted = decode_escapes(converted)
    if spec.choices and converted not in spec.choices:
        lowered = {str(c).lower(): c for c in spec.choices}
        if isinstance(converted, str) and converted.lower() in lowered:
            return lowered[converted.lower()]
        hint = did_you_mean(str(converted), [str(c) for c in spec.choices])
        raise ValueError(f"expected one of {', '.join(map(str, spec.choices))}.{hint}")
    return converted


class _Collector:
    """Collects problems so the user sees all of them at once."""

    def __init__(self, source: str):
        self.source = source
        self.problems = Problems()
        self.values: dict[str, Any] = {}
        self.given_as: dict[str, str] = {}

    def put(self, spelled: str, raw: Any, shown: str) -> None:
        canonical = alias_table().get(spelled)
        if canonical is None:
            hint = did_you_mean(spelled, alias_table().keys())
            self.problems.add(f"unknown {shown} '{spelled}'.{hint}")
            return
        if canonical in self.given_as and self.given_as[canonical] != spelled:
            self.problems.add(
                f"{shown} '{spelled}' and '{self.given_as[canonical]}' both set {canonical}; "
                "keep one."
            )
            return
        spec = all_flags()[canonical]
        try:
            self.values[canonical] = convert_value(spec, raw)
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            end = "" if str(exc).endswith((".", "?")) else "."
            self.problems.add(f"{shown} '{spelled}' got {raw!r}: {exc}{end}")
            return
        self.given_as[canonical] = spelled

    def finish(self) -> dict[str, Any]:
        if self.problems:
            message = numbered(self.source, self.problems.items)
            raise ConfigError(f"{message} Run with --help to list every flag.")
        return self.values


def parse_cli(argv: Sequence[str]) -> dict[str, Any]:
    """Parse '--name value [value ...]' and '--name=value' flags; bare booleans mean true."""
    collector = _Collector("The command line")
    index = 0
    argv = list(argv)
    while index < len(argv):
        token = argv[index]
        if not token.startswith("--") or token == "--":
            collector.problems.add(f"unexpected value {token!r}: values must follow a --flag.")
            index += 1
            continue
        name, eq, inline = token[2:].partition("=")
        name = name.replace("-", "_")
        values: list[str] = [inline] if eq else []
        index += 1
        if not eq:
            while index < len(argv) and not argv[index].startswith("--"):
                values.append(argv[index])
                index += 1
        spec = all_flags().get(alias_table().get(name, ""))
        if spec is None:  # unknown, with or without values: report it with a did-you-mean
            collector.put(name, values, "flag")
            continue
        if spec.kind == "bool" and not values:
            values = ["true"]
        if not values:
            collector.problems.add(f"flag --{name} needs a value.")
            continue
        raw: Any = (
            values
            if spec.kind in {"list", "padding_free"}
            else (values[0] if len(values) == 1 else values)
        )
        collector.put(name, raw, "flag")
    return collector.finish()


def parse_json_object(data: Any, source: str) -> dict[str, Any]:
    """Validate the keys and values of a JSON job config."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source} must hold one JSON object of flag names to values, found "
            f"{type(data).__name__}."
        )
    collector = _Collector(source)
    for key, value in data.items():
        collector.put(str(key), value, "key")
    return collector.finish()


def read_json_job(environ: Mapping[str, str]) -> tuple[dict[str, Any], str] | None:
    """Read the JSON job from the env vars containerised jobs use (base64 wins over a path)."""
    encoded = environ.get(JSON_ENV_VAR)
    if encoded:
        source = f"JSON config in ${JSON_ENV_VAR}"
        try:
            # `base64` without -w0 wraps lines; whitespace is never part of the encoding.
            text = base64.b64decode("".join(encoded.split()), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(
                f"{source} is not valid base64 of UTF-8 JSON ({exc}). Encode the JSON file with "
                "`base64 -w0 config.json`."
            ) from None
        return _loads(text, source), source
    path = environ.get(JSON_PATH_VAR)
    if path:
        is_yaml = Path(path).suffix.lower() in (".yaml", ".yml")
        source = f"{'YAML' if is_yaml else 'JSON'} config file {path} (${JSON_PATH_VAR})"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{source} cannot be read: {exc.strerror}. Point ${JSON_PATH_VAR} at an existing "
                "JSON or YAML job file."
            ) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start}). Save it as UTF-8 "
                "JSON."
            ) from None
        return (_load_yaml(text, source) if is_yaml else _loads(text, source)), source
    return None


def _load_yaml(text: str, source: str) -> dict[str, Any]:
    """A job kept in YAML: the same keys as the JSON job, just as strict."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{source} is not valid YAML{where}: {problem}. Fix the syntax."
        ) from None
    return parse_json_object({} if data is None else data, source)


def _loads(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{source} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}). "
            "Fix the JSON syntax."
        ) from None
    return parse_json_object(data, source)


def collect_values(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """JSON job (if any) first, then command-line flags on top of it."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    job = read_json_job(environ)
    if job is not None:
        values.update(job[0])
    values.update(parse_cli(argv))
    return values
