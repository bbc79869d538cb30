"""The flag schema: every flag tuneforge accepts, with its type, default and help text.

This module is the single source for the CLI parser, the JSON-config loader and docs/flags.md.
fms-hf-tuning's own flags are declared here as pydantic models; the plain
`transformers.TrainingArguments` fields come from the snapshot in hf_training_args.json, so this
layer never imports transformers or torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_SNAPSHOT = Path(__file__).with_name("hf_training_args.json")


def _extra(*, aliases: tuple[str, ...] = (), unescape: bool = False, kind: str | None = None):
    """Schema metadata the parser reads: alternative spellings, backslash-escape decoding."""
    extra: dict[str, Any] = {}
    if aliases:
        extra["aliases"] = list(aliases)
    if unescape:
        extra["unescape"] = True
    if kind:
        extra["kind"] = kind
    return extra


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelArgs(_Section):
    """Which model and tokenizer to load, and how."""

    model_name_or_path: str | None = Field(
        None, description="Local path (or hub id, when online) of the base model to tune. Required."
    )
    tokenizer_name_or_path: str | None = Field(
        None, description="Tokenizer to use; defaults to model_name_or_path."
    )
    use_flash_attn: bool = Field(
        True,
        description="Use --flash_attn_implementation (flash-attention 2 by default) when it can "
        "run (CUDA GPU and its package); otherwise the fallback chain ends at sdpa, with one "
        "notice. false: sdpa.",
    )
    flash_attn_implementation: str | None = Field(
        None,
        description="The attention transformers uses when use_flash_attn is on (fms passes it as "
        "attn_implementation): flash_attention_2 (default), flash_attention_3, sdpa, eager, "
        "flex_attention, or a hub kernel 'owner/name[@revision][:function]' such as "
        "kernels-community/vllm-flash-attn3 (needs the kernels extra and a CUDA GPU); fa2 and fa3 "
        "are short names. One that cannot run falls back to flash_attention_2, then sdpa, with "
        "one warning.",
    )
    torch_dtype: Literal["bfloat16", "float16", "float32", "auto"] = Field(
        "bfloat16", description="dtype the model weights are loaded in."
    )
    embedding_size_multiple_of: int = Field(
        1,
        ge=1,
        description="Resize the embedding matrix to a multiple of this after adding tokens.",
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code shipped with the checkpoint to run. Off unless asked."
    )


class DataArgs(_Section):
    """Where the data is and how each row becomes tokens and labels."""

    training_data_path: str | None = Field(
        None,
        description="Training data: a file (json, jsonl, parquet, arrow, csv), a folder or a glob.",
    )
    validation_data_path: str | None = Field(
        None, description="Evaluation data, in the same forms as training_data_path."
    )
    data_config_path: str | None = Field(
        None,
        description="YAML/JSON data config (named datasets, handlers, mixing). Excludes "
        "training_data_path.",
        json_schema_extra=_extra(aliases=("data_config",)),
    )
    dataset_text_field: str | None = Field(
        None,
        description="Column holding the whole training text; with response_template, only what "
        "follows the template is trained.",
    )
    dataset_conversation_field: str | None = Field(
        None, description="Column holding chat messages (default: 'messages')."
    )
    data_formatter_template: str | None = Field(
        None,
        description="Jinja template rendering each row into one text, e.g. "
        "'### Input: {{input}} \\n\\n## Label: {{output}}'. Backslash escapes are decoded.",
        json_schema_extra=_extra(unescape=True),
    )
    response_template: str | None = Field(
        None,
        description="Text that starts the response; only tokens after it are trained. "
        "Backslash escapes are decoded.",
        json_schema_extra=_extra(unescape=True),
    )
    instruction_template: str | None = Field(
        None,
        description="With response_template: text that starts each user turn, so every span from "
        "a response template to the next instruction template is trained (multi-turn).",
        json_schema_extra=_extra(unescape=True),
    )
    chat_template: str | None = Field(
        None,
        description="Jinja chat template replacing the tokenizer's. Backslash escapes are decoded.",
        json_schema_extra=_extra(unescape=True),
    )
    dataset_image_field: str | None = Field(
        None, description="Image column for vision-language tuning (not supported yet)."
    )
    add_special_tokens: list[str] | None = Field(
        None, description="Tokens to add to the tokenizer as special tokens (embeddings grow)."
    )
    do_dataprocessing_only: bool = Field(
        False,
        description="Process the data, save it to output_dir and stop, without loading the model.",
    )
    num_train_dataset_shards: int | None = Field(
        None, ge=1, description="Shards of the processed training set when saving it."
    )
    num_eval_dataset_shards: int | None = Field(
        None, ge=1, description="Shards of the processed evaluation set when saving it."
    )
    zero_label_tolerance: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of samples allowed to have no trainable token before the run "
        "stops (0 = any such sample is an error). Such samples are dropped.",
    )


class TrainingExtras(_Section):
    """fms-hf-tuning's additions to TrainingArguments, and defaults that differ from it."""

    output_dir: str | None = Field(
        None, description="Where checkpoints, logs and the resolved config go. Required."
    )
    max_seq_length: int = Field(
        4096,
        ge=1,
        description="Longest sequence trained (capped at the tokenizer's model_max_length). "
        "Longer samples keep their response and lose prompt tokens from the left.",
    )
    packing: bool = Field(False, description="Pack several samples into one sequence (BFD).")
    padding_free: list[str] | None = Field(
        None,
        description="'huggingface' (fms spelling) or true: concatenate the batch into one row "
        "with position_ids instead of padding. Needs flash-attention.",
        json_schema_extra=_extra(kind="padding_free"),
    )
    pad_to_multiple_of: int | None = Field(
        None, ge=1, description="Pad each batch's length up to a multiple of this."
    )
    save_model_dir: str | None = Field(
        None,
        description="Save the final model (or adapter) and tokenizer here. Written whole or not "
        "at all.",
    )
    cache_dir: str | None = Field(None, description="Cache folder for model and data downloads.")
    enable_reduce_loss_sum: bool = Field(
        False, description="Sum the loss over tokens instead of averaging it."
    )
    save_strategy: Literal["no", "steps", "epoch", "best"] = Field(
        "epoch", description="When to save checkpoints (fms default: epoch)."
    )
    logging_strategy: Literal["no", "steps", "epoch"] = Field(
        "epoch", description="When to log the training loss (fms default: epoch)."
    )
    resume_from_checkpoint: str | None = Field(
        None,
        description="Unset or 'true': resume from the newest complete checkpoint in output_dir "
        "if there is one. 'false': start fresh. Anything else: that checkpoint path.",
    )
    warmup_ratio: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Fraction of steps used for warm-up (older spelling of a fractional "
        "warmup_steps).",
    )


class PeftArgs(_Section):
    """Parameter-efficient tuning: LoRA and prompt tuning."""

    peft_method: Literal["lora", "pt", "alora", "none"] = Field(
        "none", description="'lora', 'pt' (prompt tuning), 'alora' or 'none' (full fine-tuning)."
    )
    r: int = Field(8, ge=1, description="LoRA rank.", json_schema_extra=_extra(aliases=("lora_r",)))
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on LoRA inputs.")
    target_modules: list[str] | None = Field(
        None,
        description="Module names to adapt, or 'all-linear'. Default: the model family's "
        "attention projections.",
    )
    exclude_modules: list[str] | None = Field(None, description="Module names never adapted.")
    layers_to_transform: list[int] | None = Field(None, description="Layer indices to adapt.")
    layers_pattern: list[str] | None = Field(
        None, description="Name of the layers container, with layers_to_transform."
    )
    modules_to_save: list[str] | None = Field(
        None, description="Modules trained in full and saved with the adapter."
    )
    target_parameters: list[str] | None = Field(
        None,
        description="LoRA on parameters rather than modules, e.g. MoE expert weights "
        "'mlp.experts.gate_up_proj' (peft's target_parameters).",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="LoRA bias training.")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA scaling.")
    lora_bias: bool = Field(False, description="Train a bias on LoRA's B matrices (peft).")
    fan_in_fan_out: bool = Field(
        False,
        description="The target layers store weights as (fan_in, fan_out), e.g. GPT-2 Conv1D.",
    )
    rank_pattern: dict[str, int] | None = Field(
        None,
        description="Per-module ranks overriding --r, as a JSON object of name regex to rank.",
        json_schema_extra=_extra(kind="json"),
    )
    alpha_pattern: dict[str, int] | None = Field(
        None,
        description="Per-module alphas overriding --lora_alpha, as a JSON object.",
        json_schema_extra=_extra(kind="json"),
    )
    trainable_token_indices: list[int] | None = Field(
        None,
        description="Train only these rows of the embedding (peft's trainable tokens), e.g. the "
        "ids of added tokens, instead of saving the whole embedding.",
    )
    layer_replication: list[list[int]] | None = Field(
        None,
        description="Build a deeper model by stacking layer ranges, e.g. [[0, 4], [2, 5]] (peft).",
        json_schema_extra=_extra(kind="json"),
    )
    ensure_weight_tying: bool = Field(
        False, description="Keep tied embedding and head tied when both are adapted (peft)."
    )
    loftq_config: dict[str, int] | None = Field(
        None,
        description="LoftQ initialisation (peft LoftQConfig): not built yet (it needs "
        "bitsandbytes quantization on CUDA).",
        json_schema_extra=_extra(kind="json"),
    )
    velora_config: dict[str, Any] | None = Field(
        None,
        description="VeLoRA memory-efficient training settings (peft VeloraConfig), e.g. "
        '{"num_groups": 64}.',
        json_schema_extra=_extra(kind="json"),
    )
    kasa_config: dict[str, float] | None = Field(
        None,
        description='KaSA settings (peft KasaConfig), e.g. {"beta": 0.0001, "gamma": 0.001}.',
        json_schema_extra=_extra(kind="json"),
    )
    use_bdlora: dict[str, Any] | None = Field(
        None,
        description="Block-diagonal LoRA for tensor-parallel serving (peft BdLoraConfig), e.g. "
        '{"nblocks": 2, "target_modules_bd_a": ["q_proj"]}.',
        json_schema_extra=_extra(kind="json"),
    )
    runtime_config: dict[str, bool] | None = Field(
        None,
        description="LoRA runtime settings (peft LoraRuntimeConfig), e.g. "
        '{"ephemeral_gpu_offload": true}.',
        json_schema_extra=_extra(kind="json"),
    )
    eva_config: dict[str, Any] | None = Field(
        None,
        description="EVA data-driven initialisation (peft EvaConfig): not built yet.",
        json_schema_extra=_extra(kind="json"),
    )
    corda_config: dict[str, Any] | None = Field(
        None,
        description="CorDA data-driven initialisation (peft CordaConfig): not built yet.",
        json_schema_extra=_extra(kind="json"),
    )
    lora_ga_config: dict[str, Any] | None = Field(
        None,
        description="LoRA-GA gradient-based initialisation (peft LoraGAConfig): not built yet.",
        json_schema_extra=_extra(kind="json"),
    )
    monteclora_config: dict[str, Any] | None = Field(
        None,
        description="MonteCLoRA (peft MontecloraConfig): not built yet.",
        json_schema_extra=_extra(kind="json"),
    )
    arrow_config: dict[str, Any] | None = Field(
        None,
        description="Arrow routing between several trained adapters (peft ArrowConfig): an "
        "inference-time setting, not for a tuning run.",
        json_schema_extra=_extra(kind="json"),
    )
    megatron_config: dict[str, Any] | None = Field(
        None,
        description="Megatron-parallel LoRA layers (peft megatron_config): not built yet.",
        json_schema_extra=_extra(kind="json"),
    )
    megatron_core: str | None = Field(
        None, description="Megatron core module for megatron_config: not built yet."
    )
    use_qalora: bool = Field(
        False, description="QA-LoRA on a GPTQ-quantized model: not built yet (no GPTQ loading)."
    )
    qalora_group_size: int | None = Field(
        None, ge=1, description="QA-LoRA group size: not built yet."
    )
    init_lora_weights: str = Field(
        "true", description="LoRA initialisation: true, false, gaussian, pissa, olora, ..."
    )
    prompt_tuning_init: Literal["TEXT", "RANDOM"] = Field(
        "TEXT", description="Prompt tuning initialisation."
    )
    num_virtual_tokens: int = Field(8, ge=1, description="Prompt tuning: virtual token count.")
    prompt_tuning_init_text: str = Field(
        "Classify if the tweet is a complaint or not:",
        description="Prompt tuning: text the virtual tokens start from.",
    )
    alora_invocation_string: str | None = Field(
        None, description="aLoRA: the string that activates the adapter."
    )


class AccelerationArgs(_Section):
    """fms acceleration-plugin flags. Accepted so fms jobs parse; unbuilt ones stop clearly."""

    quantization_method: Literal["mxfp4", "none"] = Field(
        "none", description="'mxfp4': load an MXFP4-quantized checkpoint."
    )
    dequantize: bool = Field(
        True, description="With quantization_method mxfp4: dequantize to bf16 for training."
    )
    auto_gptq: list[str] | None = Field(None, description="fms plugin: GPTQ-LoRA (not built).")
    bnb_qlora: list[str] | None = Field(None, description="fms plugin: bitsandbytes QLoRA.")
    fused_lora: list[str] | None = Field(None, description="fms plugin: fused LoRA kernels.")
    fast_kernels: list[str] | None = Field(None, description="fms plugin: fast kernels.")
    multipack: list[str] | None = Field(None, description="fms plugin: multipack sampler.")
    fast_moe: list[str] | None = Field(None, description="fms plugin: ScatterMoE.")
    trainer_controller_config_file: str | None = Field(
        None, description="fms rule-based trainer controller (not built)."
    )


class TrackerArgs(_Section):
    """Experiment trackers and run metadata."""

    trackers: list[str] = Field(
        ["file_logger"],
        description="Trackers to use: file_logger (default), aim, mlflow, tensorboard, wandb, "
        "none (see the Trackers table). --report_to names the same trackers.",
        json_schema_extra=_extra(aliases=("tracker",)),
    )
    training_logs_filename: str = Field(
        "training_logs.jsonl", description="file_logger's file name inside output_dir."
    )
    experiment: str | None = Field(
        None,
        description="Experiment name for all trackers (the run name; Aim's and MLflow's "
        "experiment unless --aim_experiment / --mlflow_experiment say otherwise).",
    )
    exp_metadata: str | None = Field(
        None,
        description="JSON object string of metadata recorded with the run (run_summary.json, "
        "and the Aim run).",
    )
    run_uri_export_path: str | None = Field(
        None,
        description="With --trackers aim: folder to write aim_tracker.json (the run hash) to; "
        "default output_dir.",
    )
    aim_experiment: str | None = Field(None, description="Aim experiment name.")
    aim_repo: str | None = Field(None, description="Aim repository path.")
    aim_remote_server_ip: str | None = Field(None, description="Aim remote server host.")
    aim_remote_server_port: int | None = Field(None, description="Aim remote server port.")
    aim_url: str | None = Field(None, description="Aim server URL.")
    mlflow_experiment: str | None = Field(None, description="MLflow experiment name.")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking URI.")


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelArgs,
    "data": DataArgs,
    "training": TrainingExtras,
    "peft": PeftArgs,
    "acceleration": AccelerationArgs,
    "tracking": TrackerArgs,
}

# Keys the Kubernetes launcher reads from the same JSON; the trainer accepts and ignores them.
LAUNCHER_KEYS = {
    "accelerate_launch_args": "Arguments for `accelerate launch` (read by the launcher).",
    "lora_post_process_for_vllm": "Post-process LoRA adapters for vLLM (read by the launcher).",
}

# TrainingArguments fields that transformers 5 removed but fms jobs still pass.
LEGACY_TRAINING_FLAGS = {
    "evaluation_strategy": "eval_strategy",
    "overwrite_output_dir": None,
    "logging_dir": None,
    "save_safetensors": None,
}
# What the transformers-4 flags without a successor mean here (the plan implements each).
LEGACY_MEANINGS = {
    "overwrite_output_dir": "true: start fresh even when output_dir holds checkpoints (unless "
    "--resume_from_checkpoint says otherwise).",
    "logging_dir": "Where TensorBoard writes (--trackers tensorboard); default output_dir/runs.",
    "save_safetensors": "Weights are always saved as safetensors; false is refused.",
}
# Value kinds of the legacy flags (booleans may be given bare, as in transformers 4).
_LEGACY_KINDS = {"overwrite_output_dir": "bool", "save_safetensors": "bool"}
# ...and what transformers 5 does when they are not given.
_LEGACY_DEFAULTS = {"overwrite_output_dir": False, "save_safetensors": True}


@dataclass(frozen=True)
class FlagSpec:
    """One accepted flag: how to parse it and where its value goes."""

    name: str
    section: str  # a SECTIONS key, "hf" (TrainingArguments pass-through) or "launcher"
    kind: str  # str | int | float | bool | list | json | padding_free
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    aliases: tuple[str, ...] = ()
    unescape: bool = False
    list_item: str = "str"


def _kind_from_annotation(annotation: Any) -> tuple[str, tuple[Any, ...] | None, str]:
    text = repr(annotation)
    choices: tuple[Any, ...] | None = None
    if "Literal[" in text:
        args = getattr(annotation, "__args__", ())
        for arg in args:
            if getattr(arg, "__args__", None):
                choices = tuple(arg.__args__)
        if choices is None and args:
            choices = tuple(args)
        return "str", choices, "str"
    if "list[int]" in text:
        return "list", None, "int"
    if "list" in text:
        return "list", None, "str"
    if "bool" in text:
        return "bool", None, "str"
    if "int" in text:
        return "int", None, "str"
    if "float" in text:
        return "float", None, "str"
    return "str", None, "str"


@cache
def hf_training_fields() -> dict[str, dict[str, Any]]:
    """The TrainingArguments snapshot: name -> {kind, default, help}."""
    return json.loads(_SNAPSHOT.read_text())


@cache
def all_flags() -> dict[str, FlagSpec]:
    """Every flag by canonical name, tuneforge's sections first, then TrainingArguments."""
    flags: dict[str, FlagSpec] = {}
    for section, model in SECTIONS.items():
        for name, field in model.model_fields.items():
            extra = field.json_schema_extra or {}
            kind, choices, item = _kind_from_annotation(field.annotation)
            flags[name] = FlagSpec(
                name=name,
                section=section,
                kind=str(extra.get("kind", kind)),
                default=field.default,
                help=field.description or "",
                choices=choices,
                aliases=tuple(extra.get("aliases", ())),
                unescape=bool(extra.get("unescape", False)),
                list_item=item,
            )
    for name, info in hf_training_fields().items():
        if name not in flags:
            choices = tuple(info["choices"]) if "choices" in info else None
            flags[name] = FlagSpec(
                name, "hf", info["kind"], info["default"], info["help"], choices=choices
            )
    for name, help_text in LAUNCHER_KEYS.items():
        flags[name] = FlagSpec(name, "launcher", "json", None, help_text)
    for name, target in LEGACY_TRAINING_FLAGS.items():
        note = f"Older spelling of {target}." if target else LEGACY_MEANINGS[name]
        kind, default = _LEGACY_KINDS.get(name, "str"), _LEGACY_DEFAULTS.get(name)
        flags[name] = FlagSpec(name, "legacy", kind, default, note)
    return flags


@cache
def alias_table() -> dict[str, str]:
    """Every accepted spelling (canonical names and aliases) -> canonical name."""
    table = {name: name for name in all_flags()}
    for spec in all_flags().values():
        for alias in spec.aliases:
            table[alias] = spec.name
    return table
