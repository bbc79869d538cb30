"""Load the causal LM the plan names: dtype, attention, quantization, embeddings sized for the
tokenizer."""

from __future__ import annotations

import math
from typing import Any

from tuning.errors import UserError
from tuning.models.attention import choose_attention
from tuning.models.plan import ModelPlan


def _dtype(name: str) -> Any:
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_model(plan: ModelPlan, tokenizer: Any) -> tuple[Any, int]:
    """The causal LM in the requested dtype and attention, embeddings sized for the tokenizer,
    and how many embedding rows were added (new rows start at the mean embedding)."""
    import torch
    from transformers import AutoModelForCausalLM

    attention = choose_attention(plan.attention, torch.cuda.is_available(), _supports_sdpa(plan))
    kwargs: dict[str, Any] = {
        "dtype": _dtype(plan.torch_dtype),
        "attn_implementation": attention,
        "trust_remote_code": plan.trust_remote_code,
        "cache_dir": plan.cache_dir,
    }
    if plan.mxfp4:
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config(dequantize=plan.dequantize)
    try:
        model = AutoModelForCausalLM.from_pretrained(plan.model_name_or_path, **kwargs)
    except OSError as exc:
        raise UserError(
            f"--model_name_or_path {plan.model_name_or_path!r}: the model could not be "
            f"loaded ({str(exc).splitlines()[0]}). Point it at a folder with config.json and "
            "safetensors weights."
        ) from exc
    added = _resize_embeddings(model, tokenizer, plan.embedding_size_multiple_of)
    return model, added


def _supports_sdpa(plan: ModelPlan) -> bool:
    """Whether transformers' class for this checkpoint implements sdpa (gpt-oss does not)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(
            plan.model_name_or_path,
            trust_remote_code=plan.trust_remote_code,
            cache_dir=plan.cache_dir,
        )
        model_class = AutoModelForCausalLM._model_mapping[type(config)]
    except (OSError, ValueError, KeyError):
        return True  # let from_pretrained say what is wrong
    return bool(getattr(model_class, "_supports_sdpa", True))


def _resize_embeddings(model: Any, tokenizer: Any, multiple_of: int) -> int:
    """Room for every token (added ones too), rounded up to a multiple of multiple_of; returns
    the rows added. transformers' mean_resizing starts them at the mean of the old rows."""
    rows = model.get_input_embeddings().weight.shape[0]
    wanted = math.ceil(max(len(tokenizer), rows) / multiple_of) * multiple_of
    if wanted != rows:
        model.resize_token_embeddings(wanted, mean_resizing=True)
    return wanted - rows
