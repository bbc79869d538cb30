"""Load the tokenizer and model the job names, and wrap the model for PEFT."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from tuning.config.job import JobConfig
from tuning.data.labels.masking import require_fast_tokenizer
from tuning.errors import ConfigError, UserError
from tuning.models.attention import choose_attention

logger = logging.getLogger(__name__)
# Tokenizers without a real limit report this sentinel (int(1e30)).
_NO_LIMIT = 10**12


def load_tokenizer(job: JobConfig) -> Any:
    """The tokenizer, with the job's chat template and added special tokens applied."""
    from transformers import AutoTokenizer

    source = job.model.tokenizer_name_or_path or job.model.model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source,
            trust_remote_code=job.model.trust_remote_code,
            cache_dir=job.training.cache_dir,
        )
    except (OSError, ValueError) as exc:
        flag = (
            "--tokenizer_name_or_path"
            if job.model.tokenizer_name_or_path
            else "--model_name_or_path"
        )
        raise UserError(
            f"{flag} {source!r}: no tokenizer could be loaded ({str(exc).splitlines()[0]}). "
            "Point it at a folder holding tokenizer.json / tokenizer_config.json."
        ) from exc
    require_fast_tokenizer(tokenizer)
    if job.data.chat_template:
        tokenizer.chat_template = job.data.chat_template
    if job.data.add_special_tokens:
        tokenizer.add_special_tokens(
            {"extra_special_tokens": list(job.data.add_special_tokens)},
            replace_extra_special_tokens=False,
        )
    if tokenizer.pad_token is None:
        fallback = tokenizer.unk_token or tokenizer.eos_token
        logger.warning(
            "The tokenizer has no pad token; padding with %r (labels stay -100).", fallback
        )
        tokenizer.pad_token = fallback
    return tokenizer


def effective_max_length(job: JobConfig, tokenizer: Any) -> int:
    """max_seq_length capped at the tokenizer's model_max_length, as fms does."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _NO_LIMIT and limit < job.training.max_seq_length:
        # Only the user's own value deserves a warning; the fms default is capped quietly.
        log = logger.warning if "max_seq_length" in job.explicitly_set else logger.info
        log(
            "--max_seq_length %d exceeds the tokenizer's model_max_length %d; using %d.",
            job.training.max_seq_length,
            limit,
            limit,
        )
        return limit
    return job.training.max_seq_length


def _dtype(name: str) -> Any:
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_model(job: JobConfig, tokenizer: Any) -> Any:
    """The causal LM in the requested dtype and attention, embeddings sized for the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    attention = choose_attention(job.model, torch.cuda.is_available())
    kwargs: dict[str, Any] = {
        "dtype": _dtype(job.model.torch_dtype),
        "attn_implementation": attention,
        "trust_remote_code": job.model.trust_remote_code,
        "cache_dir": job.training.cache_dir,
    }
    if job.acceleration.quantization_method == "mxfp4":
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config(dequantize=job.acceleration.dequantize)
    try:
        model = AutoModelForCausalLM.from_pretrained(job.model.model_name_or_path, **kwargs)
    except OSError as exc:
        raise UserError(
            f"--model_name_or_path {job.model.model_name_or_path!r}: the model could not be "
            f"loaded ({str(exc).splitlines()[0]}). Point it at a folder with config.json and "
            "safetensors weights."
        ) from exc
    _resize_embeddings(model, tokenizer, job.model.embedding_size_multiple_of)
    return model


def mxfp4_problem(path: str) -> str | None:
    """--quantization_method mxfp4 only makes sense for a checkpoint stored in MXFP4."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None  # a hub id: transformers checks it while loading
    method = (json.loads(config.read_text()).get("quantization_config") or {}).get("quant_method")
    if method == "mxfp4":
        return None
    return (
        f"--quantization_method mxfp4: the checkpoint {path} is not stored in MXFP4 "
        f"({config} has quant_method {method!r}). Drop the flag for an unquantized model."
    )


def _resize_embeddings(model: Any, tokenizer: Any, multiple_of: int) -> None:
    """Room for every token (added ones too), rounded up to a multiple of multiple_of."""
    rows = model.get_input_embeddings().weight.shape[0]
    wanted = math.ceil(max(len(tokenizer), rows) / multiple_of) * multiple_of
    if wanted != rows:
        model.resize_token_embeddings(wanted)


def peft_config(job: JobConfig) -> Any | None:
    """A peft config for --peft_method lora/pt, None for full fine-tuning."""
    p = job.peft
    if p.peft_method == "none":
        return None
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

    if p.peft_method == "lora":
        targets: Any = p.target_modules
        if targets and len(targets) == 1 and targets[0] == "all-linear":
            targets = "all-linear"
        init: Any = {"true": True, "false": False}.get(
            p.init_lora_weights.lower(), p.init_lora_weights
        )
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=p.r,
            lora_alpha=p.lora_alpha,
            lora_dropout=p.lora_dropout,
            target_modules=targets,
            exclude_modules=p.exclude_modules,
            layers_to_transform=p.layers_to_transform,
            layers_pattern=p.layers_pattern,
            modules_to_save=p.modules_to_save,
            bias=p.bias,
            use_dora=p.use_dora,
            use_rslora=p.use_rslora,
            init_lora_weights=init,
        )
    if p.peft_method == "pt":
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=p.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit(p.prompt_tuning_init),
            prompt_tuning_init_text=p.prompt_tuning_init_text
            if p.prompt_tuning_init == "TEXT"
            else None,
            tokenizer_name_or_path=job.model.tokenizer_name_or_path or job.model.model_name_or_path,
        )
    raise ConfigError(f"--peft_method {p.peft_method} is not supported.")


def apply_peft(job: JobConfig, model: Any) -> Any:
    """Wrap the model with the adapter; explain bad target_modules instead of a stack trace."""
    config = peft_config(job)
    if config is None:
        return model
    from peft import get_peft_model

    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
        raise ConfigError(
            f"--target_modules {job.peft.target_modules}: {str(exc).splitlines()[0]} "
            f"Module names in this model include: {', '.join(names[:20])}."
        ) from exc
    trainable, total = wrapped.get_nb_trainable_parameters()
    logger.info("PEFT %s: %d of %d parameters trainable.", job.peft.peft_method, trainable, total)
    return wrapped
