"""The TrainingArguments snapshot matches the installed transformers.

Why: the config layer validates pass-through flags against tuning/config/hf_training_args.json
so it never imports transformers. If transformers adds, removes or retypes a field, the snapshot
must be regenerated on purpose, or valid flags are refused and removed ones are accepted.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[3]
SCRIPT = REPO_ROOT / "scripts" / "snapshot_training_args.py"
COMMITTED = REPO_ROOT / "tuning" / "config" / "hf_training_args.json"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("snapshot_training_args", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_snapshot_matches_installed_transformers():
    fresh = json.loads(json.dumps(_load_script().snapshot(), sort_keys=True))
    committed = json.loads(COMMITTED.read_text())
    if fresh != committed:
        added = sorted(fresh.keys() - committed.keys())
        removed = sorted(committed.keys() - fresh.keys())
        changed = sorted(k for k in fresh.keys() & committed.keys() if fresh[k] != committed[k])
        raise AssertionError(
            "transformers changed TrainingArguments: run scripts/snapshot_training_args.py and "
            f"review (added {added}, removed {removed}, changed {changed})."
        )


def test_snapshot_file_is_in_the_scripts_format():
    # The committed file is exactly what the script writes, so regenerating it is a clean diff.
    committed = json.loads(COMMITTED.read_text())
    assert COMMITTED.read_text() == json.dumps(committed, indent=1, sort_keys=True) + "\n"
    assert _load_script().SNAPSHOT == COMMITTED
