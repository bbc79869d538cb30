"""The launch-environment rules: what accelerate hands each process is checked at plan time.

Why: on a cluster, a context-parallel job with flash-attention or mismatched sizes used to fail
after the model loaded on every node; an FSDP fixture on a machine without GPUs silently trained
N independent copies into one output_dir. Each rule names the fixture key to change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tuning.config.job import build_job_config
from tuning.config.launch_env import gpus_visible, read_launch_env
from tuning.config.parse import collect_values
from tuning.errors import ConfigError
from tuning.plan import build_plan

REPO = Path(__file__).resolve().parents[3]
IO = REPO / "data_configs" / "data" / "input_output.jsonl"

# What `accelerate launch --config_file fixtures/X.yaml` hands each child (accelerate 1.15).
FSDP2 = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
}
FSDP1 = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "1",
    "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
}
CP2 = {
    "ACCELERATE_USE_PARALLELISM_CONFIG": "true",
    "PARALLELISM_CONFIG_CP_SIZE": "2",
    "PARALLELISM_CONFIG_DP_SHARD_SIZE": "4",
    "PARALLELISM_CONFIG_DP_REPLICATE_SIZE": "1",
    "PARALLELISM_CONFIG_TP_SIZE": "1",
}


def _plan(tmp_path, environ: dict, *flags: str):
    argv = [
        "--model_name_or_path", str(REPO / "artifacts" / "tiny-llama"),
        "--training_data_path", str(IO), "--output_dir", str(tmp_path / "out"),
        "--max_seq_length", "128", *flags,
    ]  # fmt: skip
    return build_plan(build_job_config(collect_values(argv, environ={})), environ=environ)


def _gpu(environ: dict, monkeypatch) -> dict:
    monkeypatch.setattr("tuning.config.launch_env.glob.glob", lambda pattern: ["/dev/nvidia0"])
    return environ


def test_plain_start_reads_as_one_process(monkeypatch):
    env = read_launch_env({})
    assert (env.world_size, env.fsdp_version, env.cp_size, env.deepspeed) == (1, None, 1, False)
    assert not gpus_visible({"CUDA_VISIBLE_DEVICES": ""})
    monkeypatch.setattr("tuning.config.launch_env.glob.glob", lambda pattern: ["/dev/nvidia0"])
    assert gpus_visible({}) and not gpus_visible({"CUDA_VISIBLE_DEVICES": "-1"})


def test_context_parallel_takes_sdpa_and_pads_for_equal_chunks(tmp_path, monkeypatch):
    environ = _gpu({"WORLD_SIZE": "8", **FSDP2, **CP2}, monkeypatch)
    plan = _plan(tmp_path, environ)
    assert plan.model.attention.chain == ("sdpa",)  # use_flash_attn's default yields to sdpa
    assert plan.train.pad_to_multiple_of == 4  # 2 x cp
    assert any("sdpa" in n for n in plan.notices)
    assert plan.launch.cp_size == 2 and plan.launch.world_size == 8
    assert "use_cpu" not in plan.train.arguments


@pytest.mark.parametrize(
    ("change", "flags", "message"),
    [
        ({"FSDP_VERSION": "1"}, (), r"parallelism_config_cp_size 2 \(context parallel\) needs FSDP2"),
        ({}, ("--flash_attn_implementation", "fa2"), r"runs only with sdpa attention, but --flash_attn_implementation asks for fa2"),
        ({}, ("--packing",), r"--packing/--padding_free .* context parallel cannot split"),
        ({"WORLD_SIZE": "6"}, (), r"cp_size 2 x dp_shard_size 4 .* = 8, but 6 processes"),
        ({}, ("--max_seq_length", "130"), r"--max_seq_length 130 cannot be split into 4 equal chunks"),
        ({"ACCELERATE_MIXED_PRECISION": "bf16"}, ("--bf16", "true"), r"mixed_precision: bf16 already sets FSDP2's mixed-precision policy; --bf16"),
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, (), r"both DeepSpeed .* and FSDP"),
    ],
)  # fmt: skip
def test_launch_rules_refuse_what_cannot_work(tmp_path, monkeypatch, change, flags, message):
    environ = _gpu({"WORLD_SIZE": "8", **FSDP2, **CP2, **change}, monkeypatch)
    with pytest.raises(ConfigError, match=message):
        _plan(tmp_path, environ, *flags)


def test_fsdp_fixture_without_gpus_trains_as_cpu_ddp_with_one_notice(tmp_path, monkeypatch):
    monkeypatch.setattr("tuning.config.launch_env.glob.glob", lambda pattern: [])
    plan = _plan(tmp_path, {"WORLD_SIZE": "2", "RANK": "1", **FSDP1})
    assert plan.train.arguments["use_cpu"] is True and plan.train.fsdp_off
    notices = [n for n in plan.notices if "FSDP1 needs CUDA GPUs" in n]
    assert len(notices) == 1 and "CPU DDP over gloo" in notices[0]
    ddp = _plan(tmp_path, {"WORLD_SIZE": "2"})  # a MULTI_GPU fixture on a laptop
    assert ddp.train.arguments["use_cpu"] is True and not ddp.train.fsdp_off
    single = _plan(tmp_path, {})
    assert "use_cpu" not in single.train.arguments  # one process: the Trainer picks the device


def test_context_parallel_and_deepspeed_need_gpus(tmp_path, monkeypatch):
    monkeypatch.setattr("tuning.config.launch_env.glob.glob", lambda pattern: [])
    with pytest.raises(ConfigError, match="Context parallel cannot run on CPU"):
        _plan(tmp_path, {"WORLD_SIZE": "8", **FSDP2, **CP2})
    with pytest.raises(ConfigError, match=r"DeepSpeed \(distributed_type: DEEPSPEED\) needs CUDA"):
        _plan(tmp_path, {"WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "true"})
