"""Wrap the model for the PEFT method the plan chose (LoRA, activated LoRA, prompt tuning), with
only that method's arguments."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from tuning.errors import ConfigError
from tuning.models.plan import ModelPlan

logger = logging.getLogger(__name__)


def invocation_tokens(plan: ModelPlan, tokenizer: Any) -> list[int] | None:
    """aLoRA: the token ids of --alora_invocation_string with the run's tokenizer."""
    text = plan.peft_arguments.get("alora_invocation_string")
    if plan.peft_method != "alora" or not text:
        return None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _config_objects(p: SimpleNamespace) -> dict[str, Any]:
    """peft's nested LoRA settings, built from the JSON objects the flags hold."""
    from peft.tuners.lora import config as lora

    classes = {
        "velora_config": lora.VeloraConfig,
        "kasa_config": lora.KasaConfig,
        "use_bdlora": lora.BdLoraConfig,
        "runtime_config": lora.LoraRuntimeConfig,
    }
    built = {}
    for name, cls in classes.items():
        value = getattr(p, name)
        if value is not None:
            try:
                built[name] = cls(**value)
            except TypeError as exc:
                raise ConfigError(f"--{name}: {exc} (peft {cls.__name__}).") from None
    return built


def peft_config(plan: ModelPlan, tokenizer: Any = None) -> Any | None:
    """A peft config for --peft_method lora/alora/pt, None for full fine-tuning."""
    p = SimpleNamespace(**plan.peft_arguments)
    if plan.peft_method == "none":
        return None
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

    if plan.peft_method in ("lora", "alora"):
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
            target_parameters=p.target_parameters,
            bias=p.bias,
            use_dora=p.use_dora,
            use_rslora=p.use_rslora,
            init_lora_weights=init,
            lora_bias=p.lora_bias,
            fan_in_fan_out=p.fan_in_fan_out,
            rank_pattern=p.rank_pattern or {},
            alpha_pattern=p.alpha_pattern or {},
            trainable_token_indices=p.trainable_token_indices,
            layer_replication=[tuple(pair) for pair in p.layer_replication or []] or None,
            ensure_weight_tying=p.ensure_weight_tying,
            **_config_objects(p),
            # activated LoRA: the adapter acts only from the invocation tokens on (peft)
            alora_invocation_tokens=invocation_tokens(plan, tokenizer),
        )
    if plan.peft_method == "pt":
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=p.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit(p.prompt_tuning_init),
            prompt_tuning_init_text=p.prompt_tuning_init_text
            if p.prompt_tuning_init == "TEXT"
            else None,
            tokenizer_name_or_path=plan.tokenizer_name_or_path,
        )
    raise AssertionError(f"planning let through --peft_method {plan.peft_method}")


def apply_peft(plan: ModelPlan, model: Any, tokenizer: Any = None) -> Any:
    """Wrap the model with the adapter; explain bad target_modules instead of a stack trace."""
    config = peft_config(plan, tokenizer)
    if config is None:
        return model
    from peft import get_peft_model

    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
        raise ConfigError(
            f"--target_modules {plan.peft_arguments.get('target_modules')}: "
            f"{str(exc).splitlines()[0]} "
            f"Module names in this model include: {', '.join(names[:20])}."
        ) from exc
    trainable, total = wrapped.get_nb_trainable_parameters()
    logger.info("PEFT %s: %d of %d parameters trainable.", plan.peft_method, trainable, total)
    return wrapped
