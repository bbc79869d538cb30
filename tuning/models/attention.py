"""Pick the attention implementation, degrading to sdpa with one notice where flash cannot run."""

from __future__ import annotations

import importlib.util
import logging

from tuning.models.plan import ModelPlan

logger = logging.getLogger(__name__)
FA3_HUB_KERNEL = "kernels-community/flash-attn3"
# Implementations that keep packed sequences apart. Flash kernels use cu_seq_lens; since
# transformers 5, sdpa/eager/flex build a block-diagonal mask from packed position_ids when no
# attention_mask and no cache is given (training). tests/unit/data/test_collators.py proves it.
BOUNDARY_AWARE = {
    "flash_attention_2",
    "flash_attention_3",
    FA3_HUB_KERNEL,
    "sdpa",
    "eager",
    "flex_attention",
}


def choose_attention(model_args: ModelPlan, cuda_available: bool) -> str:
    """fms defaults use_flash_attn=True; on a laptop that must still run, on sdpa."""
    if not model_args.use_flash_attn:
        return "sdpa"
    if model_args.flash_attn_implementation == "fa3":
        if not cuda_available:
            logger.warning("flash-attention 3 needs a CUDA GPU; none found, using sdpa.")
            return "sdpa"
        return FA3_HUB_KERNEL
    if not cuda_available:
        logger.warning("use_flash_attn is on but no CUDA GPU is present: using sdpa attention.")
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is None:
        logger.warning(
            "use_flash_attn is on but the flash-attn package is not installed "
            "(pip install 'tuneforge[flash-attn]'): using sdpa attention."
        )
        return "sdpa"
    return "flash_attention_2"
