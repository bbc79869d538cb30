"""The accelerate config fixtures (fixtures/accelerate_*.yaml), checked with accelerate's own code.

Each fixture is loaded with accelerate's config loader, then put through `accelerate launch`'s
argument handling up to the environment it would give each child process, without starting any
process. The environment is what the trainer (and accelerate inside it) reads, so the exact
variables and values are pinned here.
"""

from __future__ import annotations

import os
from pathlib import Path

import accelerate.utils.launch as accelerate_launch_utils
import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"

# Variables every FSDP fixture hands its children, whatever the version.
_FSDP_COMMON = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
    "FSDP_OFFLOAD_PARAMS": "false",
    "FSDP_ACTIVATION_CHECKPOINTING_OFFLOAD": "false",
}
_FSDP1 = {
    **_FSDP_COMMON,
    "FSDP_VERSION": "1",
    "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
    "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
    "FSDP_BACKWARD_PREFETCH": "BACKWARD_PRE",
    "FSDP_FORWARD_PREFETCH": "false",
    "FSDP_USE_ORIG_PARAMS": "true",
    "FSDP_SYNC_MODULE_STATES": "true",
    "FSDP_ACTIVATION_CHECKPOINTING": "false",
    "ACCELERATE_MIXED_PRECISION": "no",
}
_FSDP2 = {
    **_FSDP_COMMON,
    "FSDP_VERSION": "2",
    "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
    "FSDP_ACTIVATION_CHECKPOINTING": "false",
    "ACCELERATE_MIXED_PRECISION": "no",
}


def _cp(cp: int, dp_shard: int) -> dict[str, str]:
    return {
        "ACCELERATE_USE_PARALLELISM_CONFIG": "true",
        "PARALLELISM_CONFIG_CP_SIZE": str(cp),
        "PARALLELISM_CONFIG_DP_SHARD_SIZE": str(dp_shard),
        "PARALLELISM_CONFIG_DP_REPLICATE_SIZE": "1",
        "PARALLELISM_CONFIG_TP_SIZE": "1",
        "PARALLELISM_CONFIG_CP_BACKEND": "torch",
        "PARALLELISM_CONFIG_CP_COMM_STRATEGY": "allgather",
    }


# fixture name -> (distributed type, num_processes, num_machines, exact child env variables)
EXPECTED: dict[str, tuple[DistributedType, int, int, dict[str, str]]] = {
    "accelerate_fsdp_defaults.yaml": (DistributedType.FSDP, 8, 1, _FSDP1),
    "accelerate_fsdp_two_nodes.yaml": (DistributedType.FSDP, 16, 2, _FSDP1),
    "accelerate_fsdp2.yaml": (DistributedType.FSDP, 8, 1, _FSDP2),
    "accelerate_fsdp2_cp.yaml": (DistributedType.FSDP, 8, 1, {**_FSDP2, **_cp(2, 4)}),
    "accelerate_fsdp2_cp_dp.yaml": (DistributedType.FSDP, 8, 1, {**_FSDP2, **_cp(4, 2)}),
    "accelerate_fsdp2_bf16_ac.yaml": (
        DistributedType.FSDP,
        8,
        1,
        {**_FSDP2, "ACCELERATE_MIXED_PRECISION": "bf16", "FSDP_ACTIVATION_CHECKPOINTING": "true"},
    ),
    "accelerate_deepspeed_zero3.yaml": (
        DistributedType.DEEPSPEED,
        8,
        1,
        {
            "ACCELERATE_USE_DEEPSPEED": "true",
            "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
            "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none",
            "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none",
            "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true",
            "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true",
            "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "auto",
            "ACCELERATE_GRADIENT_CLIPPING": "auto",
            "ACCELERATE_MIXED_PRECISION": "no",
        },
    ),
    "accelerate_ddp.yaml": (DistributedType.MULTI_GPU, 8, 1, {"ACCELERATE_MIXED_PRECISION": "no"}),
}
CP_FIXTURES = [name for name, (*_, env) in EXPECTED.items() if "PARALLELISM_CONFIG_CP_SIZE" in env]
FSDP2_FIXTURES = [name for name, (*_, env) in EXPECTED.items() if env.get("FSDP_VERSION") == "2"]

# Prefixes of the variables `accelerate launch` sets for its children (and the plan reads).
_LAUNCH_PREFIXES = ("ACCELERATE_", "FSDP_", "PARALLELISM_CONFIG_")
# Keys that only mean something to FSDP1; accelerate drops or refuses them under fsdp_version 2.
_FSDP1_ONLY = {
    "fsdp_backward_prefetch",
    "fsdp_forward_prefetch",
    "fsdp_use_orig_params",
    "fsdp_sync_module_states",
    "fsdp_sharding_strategy",
}


def _path(name: str) -> str:
    return str(FIXTURES / name)


@pytest.fixture
def clean_launch_env(monkeypatch):
    """No launch variables inherited from the shell, and no real port probing."""
    for key in list(os.environ):
        if key.startswith(_LAUNCH_PREFIXES):
            monkeypatch.delenv(key)
    # A busy 29500 on the test machine would otherwise switch to standalone mode (one node) or
    # raise (rank 0 of several nodes); neither is what a cluster node sees.
    monkeypatch.setattr(accelerate_launch_utils, "is_port_in_use", lambda port: False)
    return monkeypatch


def _child_env(path: str, *cli: str):
    """What `accelerate launch --config_file path *cli -m tuning.sft_trainer` hands each child."""
    argv = ["--config_file", path, *cli, "-m", "tuning.sft_trainer", "--output_dir", "out"]
    args = launch_command_parser().parse_args(argv)
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        # launch_command() sets this just before deepspeed_launcher(); mirror it.
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _cmd, env = accelerate_launch_utils.prepare_deepspeed_cmd_env(args)
    else:
        env = accelerate_launch_utils.prepare_multi_gpu_env(args)
    return args, {k: v for k, v in env.items() if k.startswith(_LAUNCH_PREFIXES)}


def test_every_fixture_is_checked():
    assert sorted(p.name for p in FIXTURES.glob("accelerate_*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_header_says_what_and_how(name):
    lines = (FIXTURES / name).read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert len(header) >= 3, "each fixture starts with comment lines: purpose and command"
    assert f"accelerate launch --config_file fixtures/{name}" in text
    assert "-m tuning.sft_trainer" in text


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_loads_with_accelerates_loader(name):
    dist, nproc, nmachines, env = EXPECTED[name]
    config = load_config_from_file(_path(name))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == dist
    assert config.num_processes == nproc
    assert config.num_machines == nmachines
    assert config.machine_rank == 0
    assert config.main_training_function == "main"
    assert config.mixed_precision == env["ACCELERATE_MIXED_PRECISION"]
    if dist == DistributedType.FSDP:
        fsdp = config.fsdp_config
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert fsdp["fsdp_state_dict_type"] == env["FSDP_STATE_DICT_TYPE"]
        assert fsdp["fsdp_cpu_ram_efficient_loading"] is True
        assert str(fsdp.get("fsdp_version", 1)) == env["FSDP_VERSION"]
    else:
        assert config.fsdp_config == {}
    if dist == DistributedType.DEEPSPEED:
        ds = config.deepspeed_config
        assert ds["zero_stage"] == 3
        assert ds["zero3_init_flag"] is True
        assert ds["zero3_save_16bit_model"] is True
        assert ds["offload_optimizer_device"] == ds["offload_param_device"] == "none"
        assert ds["gradient_accumulation_steps"] == ds["gradient_clipping"] == "auto"
    else:
        assert config.deepspeed_config == {}
    assert (config.parallelism_config != {}) == (name in CP_FIXTURES)


def test_fsdp_defaults_match_fms_hf_tuning():
    config = load_config_from_file(_path("accelerate_fsdp_defaults.yaml"))
    assert config.fsdp_config == {
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_backward_prefetch": "BACKWARD_PRE",
        "fsdp_sharding_strategy": "FULL_SHARD",
        "fsdp_state_dict_type": "FULL_STATE_DICT",
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_sync_module_states": True,
        "fsdp_use_orig_params": True,
        "fsdp_offload_params": False,
        "fsdp_forward_prefetch": False,
    }
    assert config.rdzv_backend == "static"
    assert config.same_network is True


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_nested_keys_are_launch_arguments(name):
    """accelerate copies nested keys onto launch args without checking them: a misspelt or
    invented key (say fsdp_mixed_precision_policy) loads fine and is silently ignored."""
    known = set(vars(launch_command_parser().parse_args(["x.py"])))
    config = load_config_from_file(_path(name))
    for section in ("fsdp_config", "deepspeed_config", "parallelism_config"):
        for key in getattr(config, section):
            launch_key = (
                key if section != "fsdp_config" or key.startswith("fsdp") else f"fsdp_{key}"
            )
            assert launch_key in known, f"{name}: {section}.{key} is not read by accelerate launch"


@pytest.mark.parametrize("name", FSDP2_FIXTURES)
def test_fsdp2_fixtures_carry_no_fsdp1_keys(name):
    fsdp = load_config_from_file(_path(name)).fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_reshard_after_forward"] is True
    assert not _FSDP1_ONLY & set(fsdp)


@pytest.mark.parametrize("name", CP_FIXTURES)
def test_cp_sizes_multiply_to_process_count(name):
    config = load_config_from_file(_path(name))
    pc = config.parallelism_config
    cp = pc["parallelism_config_cp_size"]
    dp_shard = pc["parallelism_config_dp_shard_size"]
    assert cp > 1
    assert pc.get("parallelism_config_dp_replicate_size", 1) == 1
    assert pc.get("parallelism_config_tp_size", 1) == 1
    assert cp * dp_shard == config.num_processes
    assert config.fsdp_config["fsdp_version"] == 2  # accelerate refuses cp with FSDP1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launch_hands_children_the_expected_env(name, clean_launch_env):
    _, nproc, nmachines, expected = EXPECTED[name]
    args, env = _child_env(_path(name))
    assert {k: env.get(k) for k in expected} == expected
    assert args.num_processes == nproc
    assert args.nproc_per_node == str(nproc // nmachines)
    is_fsdp = expected.get("ACCELERATE_USE_FSDP") == "true"
    assert ("ACCELERATE_USE_FSDP" in env) == is_fsdp
    assert ("FSDP_VERSION" in env) == is_fsdp
    assert ("ACCELERATE_USE_DEEPSPEED" in env) == ("ACCELERATE_USE_DEEPSPEED" in expected)
    has_pc = any(k.startswith("PARALLELISM_CONFIG_") for k in env)
    assert has_pc == (name in CP_FIXTURES)
    assert ("ACCELERATE_USE_PARALLELISM_CONFIG" in env) == (name in CP_FIXTURES)
    # accelerate never emits an FSDP mixed-precision-policy variable: FSDP takes it from
    # ACCELERATE_MIXED_PRECISION.
    assert "FSDP_MIXED_PRECISION_POLICY" not in env


def test_command_line_overrides_process_count_and_port(clean_launch_env):
    args, env = _child_env(
        _path("accelerate_fsdp_defaults.yaml"), "--num_processes=4", "--main_process_port=29617"
    )
    assert args.num_processes == 4
    assert args.nproc_per_node == "4"
    assert args.master_port == "29617"
    assert env["FSDP_VERSION"] == "1"


def test_two_nodes_rank_and_address_come_from_the_command_line(clean_launch_env):
    args, _ = _child_env(
        _path("accelerate_fsdp_two_nodes.yaml"),
        "--machine_rank=1",
        "--main_process_ip=192.168.7.2",
    )
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)
    # accelerate 1.15 ignores `same_network: true` from a config file (the launch default, False,
    # is not None so the file's value is never copied), so it uses an rdzv endpoint; accept the
    # master_addr form too should that change.
    endpoint = getattr(args, "rdzv_endpoint", None) or f"{args.master_addr}:{args.master_port}"
    assert endpoint == "192.168.7.2:29500"


def test_two_nodes_placeholder_address(clean_launch_env):
    args, _ = _child_env(_path("accelerate_fsdp_two_nodes.yaml"))
    endpoint = getattr(args, "rdzv_endpoint", None) or f"{args.master_addr}:{args.master_port}"
    assert endpoint == "10.0.0.1:29500"
    assert args.node_rank == 0


_FLAT_FMS_CP = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
fsdp_config:
  fsdp_version: 2
  fsdp_state_dict_type: SHARDED_STATE_DICT
num_processes: 8
use_parallelism_config: true
parallelism_config_cp_size: 2
parallelism_config_dp_shard_size: 4
"""


def test_loader_rejects_flat_fms_cp_form(tmp_path):
    flat = tmp_path / "flat_cp.yaml"
    flat.write_text(_FLAT_FMS_CP)
    with pytest.raises(ValueError, match="unknown keys") as raised:
        load_config_from_file(str(flat))
    for key in ("use_parallelism_config", "parallelism_config_cp_size"):
        assert key in str(raised.value)


def test_nested_cp_without_prefix_is_silently_size_one(tmp_path, clean_launch_env):
    """accelerate's own behaviour, pinned: nested keys without the parallelism_config_ prefix load
    and switch the parallelism config on, but every size stays 1 (cp is lost)."""
    unprefixed = tmp_path / "unprefixed_cp.yaml"
    unprefixed.write_text(
        _FLAT_FMS_CP.split("use_parallelism_config")[0]
        + "parallelism_config:\n  cp_size: 2\n  dp_shard_size: 4\n"
    )
    _, env = _child_env(str(unprefixed))
    assert env["ACCELERATE_USE_PARALLELISM_CONFIG"] == "true"
    assert env["PARALLELISM_CONFIG_CP_SIZE"] == "1"
    assert env["PARALLELISM_CONFIG_DP_SHARD_SIZE"] == "1"


@pytest.mark.parametrize("name", [n for n in sorted(EXPECTED) if "fsdp" in n])
def test_fsdp_plugin_accepts_child_env(name, clean_launch_env):
    """A child builds accelerate's FSDP plugin from these variables without complaint."""
    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin

    _, env = _child_env(_path(name))
    if env["FSDP_VERSION"] == "1" and not torch.cuda.is_available():
        # FSDP1 with sync_module_states asks for the current CUDA device index (only to make a
        # param_init_fn, not called here) and raises on a machine without one. Answer that one
        # lookup so everything else the plugin parses from the env is still checked on CPU.
        import accelerate.utils.dataclasses as accelerate_dataclasses

        clean_launch_env.setattr(accelerate_dataclasses, "is_cuda_available", lambda: True)
        clean_launch_env.setattr(torch.cuda, "current_device", lambda: 0)
    for key, value in env.items():
        clean_launch_env.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == int(env["FSDP_VERSION"])
    assert plugin.state_dict_type.name == env["FSDP_STATE_DICT_TYPE"]
    assert plugin.cpu_ram_efficient_loading is True
    assert plugin.activation_checkpointing == (env["FSDP_ACTIVATION_CHECKPOINTING"] == "true")
    if plugin.fsdp_version == 2:
        assert plugin.reshard_after_forward is True
        assert plugin.sync_module_states is None  # obsolete in FSDP2
    else:
        assert plugin.sharding_strategy.name == "FULL_SHARD"
        assert plugin.backward_prefetch.name == "BACKWARD_PRE"
        assert plugin.sync_module_states is True
        assert plugin.use_orig_params is True
        assert plugin.forward_prefetch is False
    if env["ACCELERATE_MIXED_PRECISION"] == "bf16":
        # What AcceleratorState does with ACCELERATE_MIXED_PRECISION for an FSDP plugin.
        plugin.set_mixed_precision("bf16")
        assert plugin.mixed_precision_policy.param_dtype == torch.bfloat16
        assert plugin.mixed_precision_policy.reduce_dtype == torch.bfloat16


@pytest.mark.parametrize("name", CP_FIXTURES)
def test_parallelism_config_from_child_env(name, clean_launch_env):
    from accelerate.parallelism_config import ParallelismConfig

    args, env = _child_env(_path(name))
    for key, value in env.items():
        clean_launch_env.setenv(key, value)
    pc = ParallelismConfig()
    assert pc.cp_size == int(env["PARALLELISM_CONFIG_CP_SIZE"]) > 1
    assert pc.dp_shard_size == int(env["PARALLELISM_CONFIG_DP_SHARD_SIZE"])
    assert pc.total_size == args.num_processes
    assert pc.cp_handler.cp_comm_strategy == "allgather"


def test_deepspeed_plugin_accepts_child_env(clean_launch_env):
    from accelerate.utils import DeepSpeedPlugin

    _, env = _child_env(_path("accelerate_deepspeed_zero3.yaml"))
    for key, value in env.items():
        clean_launch_env.setenv(key, value)
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 3
    assert plugin.zero3_init_flag is True
    assert plugin.zero3_save_16bit_model is True
    assert plugin.gradient_accumulation_steps == "auto"
    assert plugin.gradient_clipping == "auto"
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
