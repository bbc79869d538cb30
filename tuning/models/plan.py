"""The model slice of the run plan: which model and tokenizer, dtype, attention request,
quantization and the PEFT method with only its own arguments.

Found here, before any weights load: missing model folders, MXFP4 asked of a plain checkpoint,
PEFT arguments given for a method that does not use them, aLoRA (not built), and attention
kernels whose package is missing. Imports no torch, transformers or peft.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuning.config.job import JobConfig
from tuning.config.launch_env import gpus_visible
from tuning.config.schema import PeftArgs
from tuning.models.attention import AttentionPlan, plan_attention
from tuning.models.hub import source_problem
from tuning.models.quantization import mxfp4_problem, native_mxfp4_problem
from tuning.problems import Problems

# PEFT arguments by the method that reads them; any other method would silently ignore them.
LORA_ARGS = (
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
    "modules_to_save",
    "target_parameters",
    "bias",
    "use_dora",
    "use_rslora",
    "init_lora_weights",
    "lora_bias",
    "fan_in_fan_out",
    "rank_pattern",
    "alpha_pattern",
    "trainable_token_indices",
    "layer_replication",
    "ensure_weight_tying",
    "loftq_config",
    "velora_config",
    "kasa_config",
    "use_bdlora",
    "runtime_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "monteclora_config",
    "arrow_config",
    "megatron_config",
    "megatron_core",
    "use_qalora",
    "qalora_group_size",
)
# LoRA fields accepted so every peft field has a flag, whose feature tuneforge does not build
# (each needs a pass over data or bitsandbytes before training, another model format, or
# several adapters): refused, never ignored.
UNBUILT_LORA = {
    "loftq_config": "LoftQ initialisation quantizes the weights with bitsandbytes (CUDA)",
    "eva_config": "EVA initialisation needs a pass over the data before training",
    "corda_config": "CorDA initialisation needs covariance statistics from the data",
    "lora_ga_config": "LoRA-GA initialisation needs gradient estimates from the data",
    "monteclora_config": "MonteCLoRA adds its own loss term to training",
    "arrow_config": "Arrow routes between several trained adapters at inference",
    "megatron_config": "Megatron-parallel layers need a Megatron model",
    "megatron_core": "Megatron-parallel layers need a Megatron model",
    "use_qalora": "QA-LoRA needs a GPTQ-quantized model",
    "qalora_group_size": "QA-LoRA needs a GPTQ-quantized model",
}
PROMPT_TUNING_ARGS = ("prompt_tuning_init", "num_virtual_tokens", "prompt_tuning_init_text")
METHOD_ARGS = {
    "lora": LORA_ARGS,
    "alora": (*LORA_ARGS, "alora_invocation_string"),
    "pt": PROMPT_TUNING_ARGS,
    "none": (),
}


@dataclass(frozen=True)
class ModelPlan:
    """What the model stage loads and how."""

    model_name_or_path: str
    tokenizer_name_or_path: str
    trust_remote_code: bool
    torch_dtype: str
    attention: AttentionPlan
    embedding_size_multiple_of: int
    mxfp4: bool
    dequantize: bool
    peft_method: str
    peft_arguments: Mapping[str, Any]  # only the chosen method's arguments
    chat_template: str | None
    add_special_tokens: tuple[str, ...]
    cache_dir: str | None


def installed_lora_fields() -> frozenset[str] | None:
    """The fields of the installed peft's LoraConfig, read from its source (no torch import)."""
    spec = importlib.util.find_spec("peft")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "tuners" / "lora" / "config.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except OSError:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "LoraConfig":
            return frozenset(
                item.target.id
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            )
    return None


# Our LoRA flags whose peft field has another name.
PEFT_FIELD = {"alora_invocation_string": "alora_invocation_tokens"}


def _peft_problems(peft: PeftArgs) -> list[str]:
    defaults = PeftArgs.model_fields
    problems = []
    fields = installed_lora_fields() if peft.peft_method in ("lora", "alora") else None
    for name in METHOD_ARGS.get(peft.peft_method, ()) if fields is not None else ():
        given = getattr(peft, name) != defaults[name].default
        if given and PEFT_FIELD.get(name, name) not in fields:
            problems.append(
                f"--{name}: the installed peft has no LoraConfig.{PEFT_FIELD.get(name, name)}; "
                "upgrade it (pip install -U peft) or drop the flag."
            )
    if peft.peft_method == "alora" and not peft.alora_invocation_string:
        problems.append(
            "--peft_method alora needs --alora_invocation_string: the text that turns the "
            "adapter on (it must occur in every training sample)."
        )
    for name, why in UNBUILT_LORA.items():
        if getattr(peft, name) != defaults[name].default:
            problems.append(f"--{name} is not built in tuneforge yet ({why}); drop it.")
    init = peft.init_lora_weights.lower()
    if init in ("eva", "corda", "lora_ga", "loftq"):
        problems.append(
            f"--init_lora_weights {init} is not built in tuneforge yet (it needs a pass over the "
            "data, or bitsandbytes quantization, before training); use true, false, gaussian, "
            "pissa or olora."
        )
    if peft.target_parameters and peft.lora_dropout != 0:
        problems.append(
            f"--target_parameters: peft's parameter adapters do not work with dropout, but "
            f"--lora_dropout is {peft.lora_dropout:g} (its default is 0.05); set --lora_dropout 0."
        )
    used = set(METHOD_ARGS.get(peft.peft_method, ()))
    for method, names in METHOD_ARGS.items():
        if method == peft.peft_method:
            continue
        for name in names:
            if name not in used and getattr(peft, name) != defaults[name].default:
                problems.append(
                    f"--{name} is an argument of --peft_method {method}, but --peft_method is "
                    f"{peft.peft_method}, which would ignore it: set --peft_method {method} or "
                    f"drop --{name}."
                )
    return problems


def build_model_plan(
    job: JobConfig, problems: Problems, *, sdpa_only: bool = False
) -> ModelPlan | None:
    """The model slice (None when the model path is missing; problems added).

    `sdpa_only`: the launch (context parallel) allows sdpa attention only; the launch rules
    already refused an explicit flash-attention request."""
    m, a, peft = job.model, job.acceleration, job.peft
    if not m.model_name_or_path:
        problems.add("--model_name_or_path is required: the base model folder to tune.")
    for flag in ("model_name_or_path", "tokenizer_name_or_path"):
        value = getattr(m, flag)
        if value:
            problems.add(source_problem(flag, value, job.training.cache_dir))
    if a.quantization_method == "mxfp4" and m.model_name_or_path:
        problems.add(mxfp4_problem(m.model_name_or_path))
    if a.quantization_method == "mxfp4":
        problems.add(native_mxfp4_problem(a.dequantize))
    if a.quantization_method == "none" and not a.dequantize:
        problems.add(
            "--dequantize false only applies to a quantized checkpoint (--quantization_method "
            "mxfp4); drop it."
        )
    problems.extend(_peft_problems(peft))
    explicit = m.flash_attn_implementation is not None  # by value: a saved config replans alike
    try:
        attention = plan_attention(
            m.use_flash_attn, m.flash_attn_implementation, explicit, gpus_visible(), sdpa_only
        )
    except ValueError as exc:
        problems.add(str(exc))
        attention = AttentionPlan("sdpa", ("sdpa",))
    if not m.model_name_or_path:
        return None
    return ModelPlan(
        model_name_or_path=m.model_name_or_path,
        tokenizer_name_or_path=m.tokenizer_name_or_path or m.model_name_or_path,
        trust_remote_code=m.trust_remote_code,
        torch_dtype=m.torch_dtype,
        attention=attention,
        embedding_size_multiple_of=m.embedding_size_multiple_of,
        mxfp4=a.quantization_method == "mxfp4",
        dequantize=a.dequantize,
        peft_method=peft.peft_method,
        peft_arguments={n: getattr(peft, n) for n in METHOD_ARGS.get(peft.peft_method, ())},
        chat_template=job.data.chat_template,
        add_special_tokens=tuple(job.data.add_special_tokens or ()),
        cache_dir=job.training.cache_dir,
    )
