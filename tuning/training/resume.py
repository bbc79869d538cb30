"""Decide where a run resumes: the newest complete checkpoint, a given path, or nowhere."""

from __future__ import annotations

import re
from pathlib import Path

from tuning.errors import ConfigError

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Trainer writes trainer_state.json last, so its presence marks a checkpoint as complete.
COMPLETE_MARKER = "trainer_state.json"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in output_dir, oldest step first."""
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir() and (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def resolve_resume(output_dir: str, flag: str | None) -> str | None:
    """fms semantics: unset/'true' -> newest complete checkpoint if any; 'false' -> fresh."""
    value = (flag or "").strip()
    if value.lower() in ("", "true"):
        checkpoints = complete_checkpoints(Path(output_dir))
        return str(checkpoints[-1]) if checkpoints else None
    if value.lower() == "false":
        return None
    path = Path(value)
    if not (path / COMPLETE_MARKER).is_file():
        raise ConfigError(
            f"--resume_from_checkpoint {value!r} is not a complete checkpoint folder (no "
            f"{COMPLETE_MARKER} inside). Give a checkpoint-N folder, 'true' or 'false'."
        )
    return str(path)
