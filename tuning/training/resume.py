"""Decide where a run resumes: the newest complete checkpoint, a given path, or nowhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Trainer writes trainer_state.json last, so a readable one marks a checkpoint as complete.
COMPLETE_MARKER = "trainer_state.json"


def _state_problem(folder: Path) -> str | None:
    """Why a checkpoint folder is not complete, or None."""
    state = folder / COMPLETE_MARKER
    if not state.is_file():
        return f"has no {COMPLETE_MARKER}, so it is not a complete checkpoint"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"has a {COMPLETE_MARKER} that is not valid JSON (a save was cut off)"
    return None


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in output_dir, oldest step first (cut-off saves are skipped)."""
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir() and _state_problem(child) is None:
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def resolve_resume(output_dir: str, flag: str | None) -> tuple[str | None, str | None]:
    """(checkpoint to resume from, problem). fms semantics: unset/'true' -> the newest complete
    checkpoint in output_dir if any; 'false' -> fresh; anything else -> that path."""
    value = (flag or "").strip()
    if value.lower() in ("", "true"):
        checkpoints = complete_checkpoints(Path(output_dir))
        return (str(checkpoints[-1]) if checkpoints else None), None
    if value.lower() == "false":
        return None, None
    path = Path(value)
    if not path.exists():
        problem = "does not exist"
    elif not path.is_dir():
        problem = "is a file, not a checkpoint folder"
    else:
        problem = _state_problem(path)
    if problem:
        return None, (
            f"--resume_from_checkpoint {value!r} {problem}. Give a checkpoint-N folder written "
            "by a run, 'true' (newest in output_dir) or 'false' (start fresh)."
        )
    return str(path), None
