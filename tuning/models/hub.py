"""Model and tokenizer sources: a local folder, or a hub id (`owner/name`) that transformers
downloads online, or resolves from the local hub cache offline (HF_HUB_OFFLINE=1, how
air-gapped cluster jobs run with the cache on a mounted volume). Checked at plan time without
loading weights.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# What must be in the cache for each flag (any one of the names is enough).
NEEDED = {
    "model_name_or_path": ("config.json",),
    "tokenizer_name_or_path": ("tokenizer.json", "tokenizer_config.json"),
}


def offline() -> bool:
    return any(
        os.environ.get(v, "") in ("1", "true", "TRUE")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _cache_folder(cache_dir: str | None) -> str:
    if cache_dir:
        return cache_dir
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def source_problem(flag: str, value: str, cache_dir: str | None) -> str | None:
    """Why `value` (a --model_name_or_path or --tokenizer_name_or_path) cannot be loaded."""
    if Path(value).expanduser().exists():
        return None
    if not _HUB_ID.match(value):
        return f"--{flag} {value!r} does not exist."
    if not offline():
        return None  # a hub id: transformers downloads it (into --cache_dir if given)
    from huggingface_hub import try_to_load_from_cache

    for filename in NEEDED[flag]:
        found = try_to_load_from_cache(value, filename, cache_dir=cache_dir)
        if isinstance(found, str):
            return None
    folder = _cache_folder(cache_dir)
    return (
        f"--{flag} {value!r} is neither a local folder nor in the hub cache at {folder} "
        f"(no {' or '.join(NEEDED[flag])} there), and HF_HUB_OFFLINE=1 forbids downloading it. "
        "Download it into that cache first (huggingface-cli download "
        f"{value}), point HF_HOME / HF_HUB_CACHE or --cache_dir at the cache that holds it, or "
        "give a local folder."
    )
