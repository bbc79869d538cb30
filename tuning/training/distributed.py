"""The launch-environment rules of the plan: what a distributed setup (FSDP1/2, context
parallel, DeepSpeed, plain DDP, CPU) needs from the job, decided before any weights load.

Each refusal names the fixture key (as written in fixtures/*.yaml) and the flag to change. Where
a setup cannot run here but a close one can, the plan says so once and runs that instead: an
FSDP or multi-GPU fixture on a machine without GPUs trains as CPU DDP over gloo, so a cluster
command can be debugged unchanged on a laptop, never as N independent copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tuning.config.job import JobConfig
from tuning.config.launch_env import LaunchEnv


@dataclass
class LaunchDecision:
    """What the launch environment changes in the plan, and what it refuses."""

    problems: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    use_cpu: bool = False  # distributed over gloo on CPU (TrainingArguments.use_cpu)
    fsdp_off: bool = False  # an FSDP launch without GPUs: accelerate's FSDP switch is taken out
    sdpa: bool = False  # context parallel: attention must be sdpa
    pad_to_multiple_of: int | None = None


def _context_parallel(job: JobConfig, env: LaunchEnv, decision: LaunchDecision) -> None:
    cp = env.cp_size
    if env.fsdp_version != 2:
        decision.problems.append(
            f"parallelism_config_cp_size {cp} (context parallel) needs FSDP2: set "
            "fsdp_version: 2 in the accelerate config (fixtures/accelerate_fsdp2_cp.yaml)."
        )
    m = job.model
    named = m.flash_attn_implementation
    if m.use_flash_attn and named not in (None, "sdpa"):
        decision.problems.append(
            f"parallelism_config_cp_size {cp}: context parallel runs only with sdpa attention, "
            f"but --flash_attn_implementation asks for {named}; drop it (or set --use_flash_attn "
            "false)."
        )
    elif m.use_flash_attn and named is None:
        decision.notices.append(
            f"Context parallel (parallelism_config_cp_size {cp}) runs only with sdpa attention: "
            "using sdpa instead of flash-attention (use_flash_attn's default)."
        )
    decision.sdpa = True
    if job.training.packing or job.padding_free:
        decision.problems.append(
            f"parallelism_config_cp_size {cp}: --packing/--padding_free put several samples in "
            "one row, which context parallel cannot split; drop them."
        )
    sizes = cp * env.dp_shard_size * env.dp_replicate_size * env.tp_size
    if sizes != env.world_size:
        decision.problems.append(
            f"parallelism_config: cp_size {cp} x dp_shard_size {env.dp_shard_size} x "
            f"dp_replicate_size {env.dp_replicate_size} x tp_size {env.tp_size} = {sizes}, but "
            f"{env.world_size} processes were started (num_processes); make them equal."
        )
    # torch's context parallel cuts each sequence into 2 x cp chunks (load balancing)
    chunks = 2 * cp
    if job.training.max_seq_length % chunks:
        decision.problems.append(
            f"--max_seq_length {job.training.max_seq_length} cannot be split into {chunks} "
            f"equal chunks (2 x parallelism_config_cp_size {cp}); use a multiple of {chunks}."
        )
    given = job.training.pad_to_multiple_of
    decision.pad_to_multiple_of = math.lcm(given or 1, chunks)
    if decision.pad_to_multiple_of != given:
        decision.notices.append(
            f"Context parallel: batches are padded to a multiple of {decision.pad_to_multiple_of} "
            f"so each of the {cp} ranks gets equal chunks."
        )


def launch_decision(job: JobConfig, env: LaunchEnv) -> LaunchDecision:
    """The rules for this launch environment, applied to the job."""
    decision = LaunchDecision()
    if env.deepspeed and env.fsdp_version is not None:
        decision.problems.append(
            "The accelerate config turns on both DeepSpeed (distributed_type: DEEPSPEED) and "
            "FSDP (fsdp_config); use one fixture: accelerate_deepspeed_zero3.yaml or an "
            "accelerate_fsdp*.yaml."
        )
    if env.deepspeed and not env.gpus:
        decision.problems.append(
            "DeepSpeed (distributed_type: DEEPSPEED) needs CUDA GPUs and none are visible; on a "
            "machine without GPUs use fixtures/cpu_2proc.yaml to debug the job."
        )
    if env.context_parallel:
        _context_parallel(job, env, decision)
    hf = job.hf_training
    mixed = [flag for flag in ("bf16", "fp16") if hf.get(flag)]
    if env.fsdp_version == 2 and env.mixed_precision != "no" and mixed:
        decision.problems.append(
            f"The accelerate config's mixed_precision: {env.mixed_precision} already sets "
            f"FSDP2's mixed-precision policy; --{mixed[0]} would set it a second time. Drop "
            f"--{mixed[0]} (or set mixed_precision: no in the config)."
        )
    if env.distributed and not env.gpus and not env.deepspeed:
        decision.use_cpu = True
        if env.fsdp_version is not None:
            decision.fsdp_off = True
            decision.notices.append(
                f"FSDP{env.fsdp_version} needs CUDA GPUs and none are visible: these "
                f"{env.world_size} processes train as CPU DDP over gloo instead (same data, "
                "steps and outputs), so the cluster command can be debugged here."
            )
        elif not hf.get("use_cpu"):
            decision.notices.append(
                f"No CUDA GPU is visible: these {env.world_size} processes train as CPU DDP "
                "over gloo (--use_cpu true)."
            )
        if env.context_parallel:
            decision.problems.append(
                "Context parallel cannot run on CPU (torch has no CPU context parallel); run "
                "it on GPUs, or debug here with fixtures/cpu_2proc.yaml."
            )
    return decision
