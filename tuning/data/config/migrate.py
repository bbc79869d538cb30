"""Older fms-hf-tuning data-config shapes that still run: each is moved to (or run as) its
current form with one notice, or refused when it clashes with the current form."""

from __future__ import annotations

import logging
from typing import Any

from tuning.data.config.schema import OLDER_DATASET_KEYS, TEMPLATE_KEYS, DataConfig

logger = logging.getLogger(__name__)


def move_top_level_chat_template(raw: dict[str, Any]) -> list[str]:
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
    logger.warning(
        "Data config: top-level `chat_template` is the older fms-hf-tuning shape; it is used as "
        "dataprocessor.chat_template. Move it there."
    )
    processor["chat_template"] = template
    return []


def notice_older_shapes(config: DataConfig) -> None:
    """One notice per dataset-level key of the older shape (they run as handlers)."""
    for i, spec in enumerate(config.datasets):
        for key, (handler, _) in OLDER_DATASET_KEYS.items():
            if getattr(spec, key) is not None:
                logger.warning(
                    f"Data config: `datasets[{i}].{key}` ({spec.name}) is the older "
                    f"fms-hf-tuning shape; it runs as a {handler} handler before the "
                    "data_handlers. Move it into data_handlers."
                )
