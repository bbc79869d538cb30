"""Snapshot transformers.TrainingArguments' fields into tuning/config/hf_training_args.json.

The config layer must not import transformers (a bad flag should fail in well under a second), so
it validates pass-through flags against this snapshot. tests/unit/config/test_training_snapshot.py
fails when the installed transformers no longer matches it: rerun this script and review the diff.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import sys
import typing
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parents[1] / "tuning" / "config" / "hf_training_args.json"

# Fields tuneforge owns (fms additions or different defaults) or that make no sense on a CLI.
OWNED_ELSEWHERE = {"output_dir", "parallelism_config"}


def kind_of(type_text: str) -> str:
    """Collapse a dataclass annotation into the value kind the CLI parser understands."""
    text = type_text.replace("typing.", "")
    if "dict" in text:
        return "json"
    if "list" in text and "DebugOption" not in text:
        return "list"
    if re.search(r"\bstr\b|Strategy|Names|SchedulerType|Literal", text):
        return "str"
    if "bool" in text:
        return "bool"
    if "int" in text:
        return "int"
    if "float" in text:
        return "float"
    return "str"


def jsonable(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def choices_of(annotation: object) -> list[object] | None:
    """The values of the enum inside an annotation (SchedulerType, OptimizerNames, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [member.value for member in annotation]
    for arg in typing.get_args(annotation):
        found = choices_of(arg)
        if found:
            return found
    return None


def snapshot() -> dict[str, dict]:
    from transformers import TrainingArguments

    fields = {}
    hints = typing.get_type_hints(TrainingArguments)
    for field in dataclasses.fields(TrainingArguments):
        if field.name in OWNED_ELSEWHERE or not field.init or field.name.startswith("_"):
            continue
        default = field.default
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        help_text = " ".join(str(field.metadata.get("help", "")).split())
        fields[field.name] = {
            "kind": kind_of(str(field.type)),
            "default": jsonable(None if default is dataclasses.MISSING else default),
            "help": help_text,
        }
        choices = choices_of(hints.get(field.name))
        if choices and "list" not in str(field.type):  # a list of options takes several
            fields[field.name]["choices"] = choices
    return fields


def main() -> int:
    SNAPSHOT.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
