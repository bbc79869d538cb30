"""training_logs.jsonl in fms-hf-tuning's format, written by the main process only."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class FileLoggerCallback(TrainerCallback):
    """Append one JSON line per loss log event: {"data": {...}, "name": "training_loss"}."""

    _EVENTS = {"loss": "training_loss", "eval_loss": "validation_loss"}

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any):
        if not state.is_world_process_zero or not logs:
            return
        lines = []
        for key, name in self._EVENTS.items():
            if key in logs:
                record = {
                    "data": {
                        "epoch": round(float(state.epoch or 0.0), 2),
                        "step": int(state.global_step),
                        "timestamp": datetime.now(timezone.utc).isoformat(),
                        "value": float(logs[key]),
                    },
                    "name": name,
                }
                lines.append(json.dumps(record, sort_keys=True))
        if lines:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
