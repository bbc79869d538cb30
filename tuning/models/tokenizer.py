"""Load the tokenizer the plan names, with its chat template and added special tokens."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tuning.errors import UserError
from tuning.models.plan import ModelPlan

logger = logging.getLogger(__name__)
# Tokenizers without a real limit report this sentinel (int(1e30)).
_NO_LIMIT = 10**12


def load_tokenizer(plan: ModelPlan) -> Any:
    """The tokenizer the plan names, with its chat template and added special tokens."""
    own = plan.tokenizer_name_or_path != plan.model_name_or_path
    return open_tokenizer(
        plan.tokenizer_name_or_path,
        flag="--tokenizer_name_or_path" if own else "--model_name_or_path",
        chat_template=plan.chat_template,
        add_special_tokens=plan.add_special_tokens,
        trust_remote_code=plan.trust_remote_code,
        cache_dir=plan.cache_dir,
    )


def open_tokenizer(
    source: str,
    *,
    flag: str,
    chat_template: str | None = None,
    add_special_tokens: Sequence[str] = (),
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
) -> Any:
    """A tokenizer from a folder (or cached hub id); `flag` names where it came from in errors.
    Tools such as the preview use this too, so they see exactly what training sees."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=trust_remote_code, cache_dir=cache_dir
        )
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{flag} {source!r}: no tokenizer could be loaded ({str(exc).splitlines()[0]}). "
            "Point it at a folder holding tokenizer.json / tokenizer_config.json."
        ) from exc
    if chat_template:
        tokenizer.chat_template = chat_template
    if add_special_tokens:
        tokenizer.add_special_tokens(
            {"extra_special_tokens": list(add_special_tokens)},
            replace_extra_special_tokens=False,
        )
    if tokenizer.pad_token is None:
        fallback = tokenizer.unk_token or tokenizer.eos_token
        logger.warning(
            "The tokenizer has no pad token; padding with %r (labels stay -100).", fallback
        )
        tokenizer.pad_token = fallback
    return tokenizer


def effective_max_length(max_seq_length: int, explicit: bool, tokenizer: Any) -> int:
    """max_seq_length capped at the tokenizer's model_max_length, as fms does."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _NO_LIMIT and limit < max_seq_length:
        # Only the user's own value deserves a warning; the fms default is capped quietly.
        log = logger.warning if explicit else logger.info
        log(
            "--max_seq_length %d exceeds the tokenizer's model_max_length %d; using %d.",
            max_seq_length,
            limit,
            limit,
        )
        return limit
    return max_seq_length
