"""The container pieces in build/: Kubernetes manifests, the Dockerfile, and the launcher's pure
parts (accelerate options, cluster environment, config translation, exit codes, vLLM adapters).

Why: nothing here can run in CI (no registry, cluster or GPU), so these tests are what stands
between a typo in a manifest, a COPY of a missing file or a wrong env mapping and a failed job
on a cluster. build/ is not a package (it must not shadow PyPA `build`), so the launcher is
loaded from its path.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tuning.config.job import build_job_config
from tuning.config.parse import parse_json_object
from tuning.config.schema import LAUNCHER_KEYS
from tuning.errors import ConfigError, UserError
from tuning.plan import build_plan

REPO = Path(__file__).resolve().parents[3]
BUILD = REPO / "build"
K8S = BUILD / "k8s"
DATA = REPO / "data_configs" / "data"
TINY = REPO / "artifacts" / "tiny-llama"


def _load_launcher():
    spec = importlib.util.spec_from_file_location(
        "accelerate_launch", BUILD / "accelerate_launch.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


launcher = _load_launcher()


@pytest.fixture(scope="module")
def kinds() -> dict[str, str]:
    """accelerate's real launch options (importing accelerate takes seconds: once per module)."""
    return launcher.option_kinds(launcher.accelerate_parser())


# --- manifests -------------------------------------------------------------------------------


@functools.cache
def _parsed() -> tuple[tuple[str, dict], ...]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path.name, doc))
    return tuple(found)


def _documents() -> list[tuple[str, dict]]:
    """Every manifest document (a deep copy: tests may not change each other's view)."""
    return copy.deepcopy(list(_parsed()))


def _one(kind: str) -> dict:
    docs = [doc for _, doc in _documents() if doc["kind"] == kind]
    assert len(docs) == 1, f"expected one {kind}"
    return docs[0]


def _pods() -> list[tuple[str, dict]]:
    """(name, pod spec) of every workload's pod template."""
    job = _one("PyTorchJob")["spec"]["pytorchReplicaSpecs"]
    pods = [(f"PyTorchJob/{role}", spec["template"]["spec"]) for role, spec in job.items()]
    return [*pods, ("Job", _one("Job")["spec"]["template"]["spec"])]


POD_NAMES = ["PyTorchJob/Master", "PyTorchJob/Worker", "Job"]


def _pod(name: str) -> dict:
    return dict(_pods())[name]


def test_every_manifest_parses_with_kind_api_version_and_name():
    docs = _documents()
    assert {(d["apiVersion"], d["kind"]) for _, d in docs} == {
        ("v1", "ConfigMap"),
        ("v1", "PersistentVolumeClaim"),
        ("kubeflow.org/v1", "PyTorchJob"),
        ("batch/v1", "Job"),
    }
    assert all(d["metadata"]["name"] for _, d in docs)


def test_pytorchjob_has_master_and_workers_that_restart_and_a_backoff_limit():
    job = _one("PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1
    assert {r["restartPolicy"] for r in replicas.values()} == {"OnFailure"}
    assert job["spec"]["runPolicy"]["backoffLimit"] > 0
    for spec in replicas.values():  # the training operator finds the container by this name
        assert [c["name"] for c in spec["template"]["spec"]["containers"]] == ["pytorch"]


def test_pytorchjob_offers_the_kueue_queue_label():
    text = (K8S / "pytorchjob.yaml").read_text()
    assert re.search(r"^\s*#?\s*kueue\.x-k8s\.io/queue-name: \S+", text, re.M)


def test_single_gpu_job_fails_at_once_on_a_user_error_and_retries_otherwise():
    spec = _one("Job")["spec"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and spec["backoffLimit"] > 0
    rules = spec["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert fail[0]["onExitCodes"]["values"] == [1]
    assert fail[0]["onExitCodes"]["containerName"] == pod["containers"][0]["name"]
    assert any(r["action"] == "Ignore" for r in rules)  # preemption does not use up retries


@pytest.mark.parametrize("name", POD_NAMES)
def test_pod_reports_through_the_termination_log_and_asks_for_gpus(name):
    (container,) = _pod(name)["containers"]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] >= 1
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
    assert container["image"]


@pytest.mark.parametrize("name", POD_NAMES)
def test_volumes_and_mounts_match_by_name_and_claims_exist(name):
    pod = _pod(name)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
    assert mounts == set(volumes)
    claims = {
        d["metadata"]["name"] for _, d in _documents() if d["kind"] == "PersistentVolumeClaim"
    }
    used = {
        v["persistentVolumeClaim"]["claimName"]
        for v in volumes.values()
        if "persistentVolumeClaim" in v
    }
    assert used and used <= claims


def _job_file(name: str) -> tuple[str, dict]:
    """(env path, the ConfigMap key it reads) for one pod."""
    pod = _pod(name)
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = PurePosixPath(env["SFT_TRAINER_CONFIG_JSON_PATH"])
    mount = next(
        m for m in container["volumeMounts"] if path.parent == PurePosixPath(m["mountPath"])
    )
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = volume["configMap"]
    items = {i["path"]: i["key"] for i in config_map.get("items", [])}
    key = items.get(path.name, path.name)
    return config_map["name"], {"key": key, "path": str(path)}


@pytest.mark.parametrize("name", POD_NAMES)
def test_job_path_points_at_a_key_of_the_mounted_configmap(name):
    config_map_name, where = _job_file(name)
    config_map = _one("ConfigMap")
    assert config_map["metadata"]["name"] == config_map_name
    assert where["key"] in config_map["data"]


def _mounts(name: str) -> dict[str, str]:
    (container,) = _pod(name)["containers"]
    return {m["mountPath"]: m["name"] for m in container["volumeMounts"]}


def _localise(value: Any, mounts: dict[str, Path]) -> Any:
    """Pod paths -> this machine's, so the ConfigMap job plans here as it will in the pod."""
    if isinstance(value, dict):
        return {k: _localise(v, mounts) for k, v in value.items()}
    if isinstance(value, list):
        return [_localise(v, mounts) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        for mount, local in mounts.items():
            if value == mount or value.startswith(mount + "/"):
                return str(local / value[len(mount) :].lstrip("/"))
        raise AssertionError(f"{value} is not under any volume the pod mounts")
    return value


@pytest.mark.parametrize("name", POD_NAMES)
def test_configmap_job_parses_and_plans(name, tmp_path, kinds):
    _, where = _job_file(name)
    job = json.loads(_one("ConfigMap")["data"][where["key"]])
    assert parse_json_object(job, "ConfigMap job")  # every key known, launcher keys included
    launcher_args = launcher.check_user_options(job.get("accelerate_launch_args", {}), kinds)
    if "config_file" in launcher_args:  # a path in the image: the file COPY put there loads
        launcher_args["config_file"] = str(_image_to_repo(launcher_args["config_file"]))
        config, _ = launcher.prepare_config_file(launcher_args, kinds, tmp_path)
        assert config["distributed_type"]
    trainer_job = {k: v for k, v in job.items() if k not in LAUNCHER_KEYS}
    by_volume = {"models": tmp_path / "models", "data": DATA, "output": tmp_path / "output"}
    mounts = {
        path: by_volume[volume] for path, volume in _mounts(name).items() if volume in by_volume
    }
    (tmp_path / "models").mkdir()
    model = PurePosixPath(trainer_job["model_name_or_path"]).name
    (tmp_path / "models" / model).symlink_to(TINY, target_is_directory=True)
    local = _localise(trainer_job, mounts)
    plan = build_plan(build_job_config(parse_json_object(local, "ConfigMap job")))
    assert plan.train.output_dir.startswith(str(tmp_path / "output"))
    if job.get("lora_post_process_for_vllm"):
        assert launcher.vllm_problem(plan) is None


# --- Dockerfile ------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, list[str]]]:
    text = (BUILD / "Dockerfile").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.split()))
    return found


def _copied_sources() -> list[str]:
    sources = []
    for word, args in _dockerfile_instructions():
        if word == "COPY" and not any(a.startswith("--from") for a in args):
            sources += [a for a in args[:-1] if not a.startswith("--")]
    return sources


def _image_to_repo(path: str) -> Path:
    """A path inside the image -> the repository file a COPY put there."""
    for word, args in _dockerfile_instructions():
        if word == "COPY" and not any(a.startswith("--from") for a in args):
            *sources, target = [a for a in args if not a.startswith("--")]
            for source in sources:
                if source.endswith("/") and path.startswith(target):
                    return REPO / source / path[len(target) :]
                if path == target:
                    return REPO / source
    raise AssertionError(f"{path} is not in the image")


def test_every_file_the_dockerfile_copies_exists():
    sources = _copied_sources()
    assert {"fixtures/", "build/accelerate_launch.py", "pyproject.toml", "tuning/"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), source


def test_dockerignore_lets_every_copied_file_through():
    rules = [
        r for r in (BUILD / "Dockerfile.dockerignore").read_text().splitlines() if r.startswith("!")
    ]
    allowed = {r[1:].rstrip("/") for r in rules}
    assert {s.rstrip("/") for s in _copied_sources()} <= allowed


def test_dockerfile_runs_the_launcher_as_a_non_root_user():
    instructions = _dockerfile_instructions()
    entry = [json.loads(" ".join(a)) for w, a in instructions if w == "ENTRYPOINT"][-1]
    assert entry[-1] == "/app/accelerate_launch.py"
    assert [a for w, a in instructions if w == "USER"][-1] != ["root"]
    assert ['EXTRAS=""'] in [a for w, a in instructions if w == "ARG"]
    env = " ".join(" ".join(a) for w, a in instructions if w == "ENV")
    assert "TERMINATION_LOG_FILE=/dev/termination-log" in env
    base = next(a for w, a in instructions if w == "ARG" and a[0].startswith("CUDA_IMAGE="))
    assert base[0].startswith("CUDA_IMAGE=nvidia/cuda:") and "runtime" in base[0]
    assert next(a for w, a in instructions if w == "FROM")[0] == "${CUDA_IMAGE}"


# --- accelerate_launch_args -------------------------------------------------------------------


def test_true_switch_is_the_bare_flag_and_false_is_left_off(kinds):
    options = launcher.check_user_options(
        {"multi_gpu": True, "quiet": False, "num_processes": 2, "same-network": "true"}, kinds
    )
    argv = launcher.render_options(options, kinds)
    assert argv == ["--multi_gpu", "--num_processes", "2", "--same_network"]


def test_value_options_are_rendered_as_text_and_lists_repeat(kinds):
    options = {"mixed_precision": "bf16", "fsdp_offload_params": False, "env": ["A=1", "B=2"]}
    argv = launcher.render_options(options, kinds)
    assert argv == [
        "--mixed_precision", "bf16", "--fsdp_offload_params", "false", "--env", "A=1", "--env", "B=2"
    ]  # fmt: skip


def test_unknown_key_is_a_user_error_with_a_did_you_mean_and_the_valid_keys(kinds):
    with pytest.raises(ConfigError, match=r"num_proceses.*Did you mean 'num_processes'") as info:
        launcher.check_user_options({"num_proceses": 2}, kinds)
    assert info.value.exit_code == 1
    with pytest.raises(ConfigError, match=r"Valid keys: .*config_file.*num_processes"):
        launcher.check_user_options({"zzz": 2}, kinds)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"module": True}, r"always runs `-m tuning.sft_trainer`"),
        ({"multi_gpu": "yes"}, r"multi_gpu.*is a switch"),
        ({"num_processes": [2, 3]}, r"num_processes.*takes one value"),
    ],
)
def test_options_the_launcher_refuses(args, message, kinds):
    with pytest.raises(ConfigError, match=message):
        launcher.check_user_options(args, kinds)


def test_a_bad_value_is_exit_1_not_argparse_exit_2(tmp_path):
    with pytest.raises(ConfigError, match=r"--num_processes.*invalid int value: 'two'"):
        launcher.accelerate_argv({"num_processes": "two"}, {"CUDA_VISIBLE_DEVICES": ""}, tmp_path)


def test_argv_runs_the_trainer_module_with_the_job_options(tmp_path):
    argv, notices = launcher.accelerate_argv(
        {"num_processes": 2, "multi_gpu": True, "debug": False},
        {"CUDA_VISIBLE_DEVICES": ""},
        tmp_path,
    )
    assert argv == ["--num_processes", "2", "--multi_gpu", "--module", "tuning.sft_trainer"]
    assert notices == []


def test_config_file_must_exist_with_a_hint(tmp_path, kinds):
    with pytest.raises(
        ConfigError, match=r"cpu_2prc.yaml.*does not exist.*Did you mean 'cpu_2proc.yaml'"
    ):
        launcher.prepare_config_file({"config_file": "fixtures/cpu_2prc.yaml"}, kinds, tmp_path)


def test_shipped_fixture_config_is_used_as_is(kinds, tmp_path):
    options = {"config_file": str(REPO / "fixtures" / "cpu_2proc.yaml")}
    config, notices = launcher.prepare_config_file(options, kinds, tmp_path)
    assert config["num_processes"] == 2 and notices == []
    assert options["config_file"] == str(REPO / "fixtures" / "cpu_2proc.yaml")


# --- flat context-parallel configs ------------------------------------------------------------

FLAT_CP = {
    "compute_environment": "LOCAL_MACHINE",
    "distributed_type": "FSDP",
    "fsdp_config": {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP"},
    "mixed_precision": "bf16",
    "num_machines": 1,
    "num_processes": 4,
    "use_parallelism_config": True,
    "parallelism_config_dp_shard_size": 2,
    "parallelism_config_cp_size": 2,
    "parallelism_config_cp_comm_strategy": "alltoall",
}


def test_flat_parallelism_keys_move_under_parallelism_config(kinds):
    known = [k for k in kinds if k.startswith("parallelism_config_")]
    translated, changed = launcher.translate_flat_parallelism(FLAT_CP, known)
    assert changed
    assert translated["parallelism_config"] == {
        "parallelism_config_dp_shard_size": 2,
        "parallelism_config_cp_size": 2,
        "parallelism_config_cp_comm_strategy": "alltoall",
    }
    assert not [k for k in translated if k.startswith("parallelism_config_")]
    assert "use_parallelism_config" not in translated
    nested = {k: v for k, v in translated.items()}
    assert launcher.translate_flat_parallelism(nested, known) == (nested, False)


def test_translated_config_loads_in_accelerate_with_one_notice(tmp_path, kinds):
    from accelerate.commands.config.config_args import load_config_from_file

    source = tmp_path / "fsdp2_cp.yaml"
    source.write_text(yaml.safe_dump(FLAT_CP))
    with pytest.raises(ValueError, match="unknown keys"):  # why the translation exists
        load_config_from_file(str(source))
    workdir = tmp_path / "work"
    workdir.mkdir()
    options = {"config_file": str(source)}
    _, notices = launcher.prepare_config_file(options, kinds, workdir)
    assert len(notices) == 1 and "parallelism_config" in notices[0]
    loaded = load_config_from_file(options["config_file"])
    assert loaded.parallelism_config["parallelism_config_cp_size"] == 2
    assert loaded.num_processes == 4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"parallelism_config_cp_sise": 2}, r"cp_sise.*Did you mean 'parallelism_config_cp_size'"),
        ({"use_parallelism_config": False}, r"use_parallelism_config: false"),
        ({"parallelism_config": {"parallelism_config_tp_size": 2}}, r"both a nested"),
    ],
)
def test_flat_parallelism_mistakes_are_refused(extra, message, kinds):
    known = [k for k in kinds if k.startswith("parallelism_config_")]
    with pytest.raises(ConfigError, match=message):
        launcher.translate_flat_parallelism({**FLAT_CP, **extra}, known)


# --- the cluster environment ------------------------------------------------------------------

PYTORCHJOB_OLD = {
    "MASTER_ADDR": "sft-master-0",
    "MASTER_PORT": "23456",
    "WORLD_SIZE": "2",
    "RANK": "1",
}
PYTORCHJOB_NEW = {
    "MASTER_ADDR": "sft-master-0",
    "MASTER_PORT": "23456",
    "WORLD_SIZE": "16",  # replicas x nprocPerNode in training-operator >= 1.7
    "RANK": "1",
    "PET_NNODES": "2",
    "PET_NODE_RANK": "1",
    "PET_NPROC_PER_NODE": "auto",
}
TRAINJOB = {
    "PET_NNODES": "3",
    "PET_NODE_RANK": "2",
    "PET_MASTER_ADDR": "trainjob-node-0-0.trainjob",
    "PET_MASTER_PORT": "29400",
    "PET_NPROC_PER_NODE": "4",
}


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param(PYTORCHJOB_OLD, dict(num_machines=2, machine_rank=1, main_process_ip="sft-master-0", main_process_port=23456, num_processes=16), id="pytorchjob"),
        pytest.param(PYTORCHJOB_NEW, dict(num_machines=2, machine_rank=1, main_process_ip="sft-master-0", main_process_port=23456, num_processes=16), id="pytorchjob-pet"),
        pytest.param(TRAINJOB, dict(num_machines=3, machine_rank=2, main_process_ip="trainjob-node-0-0.trainjob", main_process_port=29400, num_processes=12), id="trainjob"),
        pytest.param({}, {}, id="no-cluster"),
        pytest.param({"WORLD_SIZE": "1", "RANK": "0", "MASTER_ADDR": "x"}, {}, id="one-pod"),
        pytest.param({"PET_NNODES": "1", "PET_NPROC_PER_NODE": "2"}, dict(num_processes=2), id="one-node-2-procs"),
    ],
)  # fmt: skip
def test_cluster_environment_maps_to_accelerate_options(environ, expected):
    assert launcher.cluster_options(environ, gpus=8) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PET_NNODES": "1:3"}, r"elastic range"),
        ({"WORLD_SIZE": "two"}, r"\$WORLD_SIZE is 'two'"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "m"}, r"only 2 nodes"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, r"no master address"),
        (
            {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "cpu", "PET_MASTER_ADDR": "m"},
            r"PET_NPROC_PER_NODE is 'cpu'",
        ),
    ],
)
def test_cluster_environment_mistakes(environ, message):
    with pytest.raises(ConfigError, match=message):
        launcher.cluster_options(environ, gpus=8)


def test_job_options_win_over_the_cluster_and_several_processes_get_a_distributed_mode():
    cluster = launcher.cluster_options(PYTORCHJOB_OLD, gpus=8)
    options, notices = launcher.resolve_options(
        {"main_process_port": 29500}, cluster, {}, 8, "fixtures/accelerate_fsdp_defaults.yaml"
    )
    assert options["main_process_port"] == 29500 and options["num_processes"] == 16
    assert options["config_file"] == "fixtures/accelerate_fsdp_defaults.yaml"  # as fms does
    assert "FSDP defaults" in notices[0]
    options, notices = launcher.resolve_options({"num_processes": 2}, {}, {}, 0, "f.yaml")
    assert options["multi_gpu"] is True and "--multi_gpu" in notices[0]  # CPU: torchrun, no FSDP
    fsdp = {"distributed_type": "FSDP", "num_processes": 8}
    options, notices = launcher.resolve_options({"config_file": "f.yaml"}, cluster, fsdp, 8)
    assert "multi_gpu" not in options and options["config_file"] == "f.yaml" and notices == []


def test_gpus_win_over_the_config_files_fixed_count_with_a_notice():
    options, notices = launcher.resolve_options(
        {"config_file": "f.yaml"}, {}, {"num_processes": 8}, 4
    )
    assert options["num_processes"] == 4 and "num_processes 8" in notices[0]


def test_fsdp_defaults_file_is_the_shipped_fixture_or_the_env_override(tmp_path):
    assert launcher.fsdp_defaults_file({}) == str(
        REPO / "fixtures" / "accelerate_fsdp_defaults.yaml"
    )
    own = tmp_path / "fsdp.yaml"
    own.write_text("distributed_type: FSDP\n")
    assert launcher.fsdp_defaults_file({"FSDP_DEFAULTS_FILE_PATH": str(own)}) == str(own)
    with pytest.raises(ConfigError, match="FSDP_DEFAULTS_FILE_PATH"):
        launcher.fsdp_defaults_file({"FSDP_DEFAULTS_FILE_PATH": str(tmp_path / "missing.yaml")})


@pytest.mark.parametrize(
    ("user", "config", "gpus", "expected"),
    [
        ({}, {}, 4, 4),  # one process per visible GPU
        ({}, {}, 0, 1),  # none visible: one process
        ({"num_processes": 2}, {}, 8, 2),  # the job says so
        ({}, {"num_processes": 2}, 8, 8),  # the GPUs this pod has win over a file's fixed count
        ({}, {"num_processes": 2}, 0, None),  # no GPU: the config file's count, left to accelerate
    ],
)
def test_num_processes_default(user, config, gpus, expected):
    options, _ = launcher.resolve_options(user, {}, config, gpus)
    assert options.get("num_processes") == expected


@pytest.mark.parametrize(
    ("environ", "devices", "smi", "expected"),
    [
        ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, ["/dev/nvidia0"], None, 3),
        ({"CUDA_VISIBLE_DEVICES": ""}, ["/dev/nvidia0"], None, 0),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, [], None, 0),
        ({"CUDA_VISIBLE_DEVICES": "0,-1,2"}, [], None, 1),
        ({"CUDA_VISIBLE_DEVICES": "GPU-8a3c,GPU-77f1"}, [], None, 2),
        ({}, ["/dev/nvidia0", "/dev/nvidia1"], None, 2),
        ({}, [], "GPU 0: NVIDIA H100 (UUID: x)\nGPU 1: NVIDIA H100 (UUID: y)\n", 2),
        ({}, [], None, 0),
    ],
)
def test_visible_gpu_count_without_torch(environ, devices, smi, expected):
    count = launcher.visible_gpu_count(environ, lambda: devices, lambda: smi)
    assert count == expected


def test_full_argv_for_a_pytorchjob_worker(tmp_path):
    environ = {**PYTORCHJOB_NEW, "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    argv, notices = launcher.accelerate_argv({}, environ, tmp_path)
    assert argv == [
        "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "sft-master-0",
        "--main_process_port", "23456", "--num_processes", "16",
        "--config_file", str(REPO / "fixtures" / "accelerate_fsdp_defaults.yaml"),
        "--module", "tuning.sft_trainer",
    ]  # fmt: skip
    assert not launcher.is_main_node(argv) and len(notices) == 1


# --- the children's environment and exit codes ------------------------------------------------


def test_children_get_the_job_file_a_private_log_and_no_cluster_variables(tmp_path):
    environ = {**PYTORCHJOB_NEW, "SFT_TRAINER_CONFIG_JSON_ENV_VAR": "e30=", "HOME": "/home/x"}
    env = launcher.child_environment(environ, tmp_path / "job.json", tmp_path / "log")
    assert env == {
        "HOME": "/home/x",
        "SFT_TRAINER_CONFIG_JSON_PATH": str(tmp_path / "job.json"),
        "TERMINATION_LOG_FILE": str(tmp_path / "log"),
    }


def test_child_messages_are_split_and_each_kept_once():
    text = (
        "Error: The job: data file missing.\n"
        "Internal error: gloo connection closed\nby peer\n"
        "Error: The job: data file missing.\n"
    )
    assert launcher.child_messages(text) == [
        "Error: The job: data file missing.",
        "Internal error: gloo connection closed\nby peer",
    ]


@pytest.mark.parametrize(
    ("returncode", "messages", "expected"),
    [
        (0, [], 0),
        (1, ["Error: bad tracker"], 1),  # accelerate exits 1 for anything: the children decide
        (1, ["Internal error: boom"], 203),
        (1, ["Internal error: peer closed", "Error: bad data on rank 1"], 1),  # user error anywhere
        (203, [], 203),
        (-9, [], 203),
        (2, ["something else"], 203),
    ],
)
def test_exit_code_comes_from_what_the_children_wrote(returncode, messages, expected):
    assert launcher.exit_code_for(returncode, messages) == expected


# --- vLLM adapters ----------------------------------------------------------------------------


def _adapter(folder: Path, rows: int) -> dict:
    import torch
    from safetensors.torch import save_file

    tensors = {
        "base_model.model.model.embed_tokens.weight": torch.arange(rows * 4.0).reshape(rows, 4),
        "base_model.model.lm_head.weight": -torch.arange(rows * 4.0).reshape(rows, 4),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 4),
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return tensors


def test_new_token_rows_move_to_new_embeddings(tmp_path):
    from safetensors.torch import load_file

    tensors = _adapter(tmp_path, rows=13)
    assert launcher.move_new_token_embeddings(tmp_path, base_vocab_size=10) is True
    new = load_file(str(tmp_path / "new_embeddings.safetensors"))
    assert (
        new["input_embeddings"].tolist()
        == tensors["base_model.model.model.embed_tokens.weight"][10:].tolist()
    )
    assert (
        new["output_embeddings"].tolist()
        == tensors["base_model.model.lm_head.weight"][10:].tolist()
    )
    kept = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert list(kept) == ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert launcher.move_new_token_embeddings(tmp_path, base_vocab_size=10) is False  # idempotent


def test_embeddings_without_added_rows_are_refused(tmp_path):
    _adapter(tmp_path, rows=10)
    with pytest.raises(UserError, match=r"no token was added"):
        launcher.move_new_token_embeddings(tmp_path, base_vocab_size=10)


# --- the launcher as a whole, in process (no training) ----------------------------------------


def _job(tmp_path: Path, **extra) -> dict:
    return {
        "model_name_or_path": str(TINY),
        "training_data_path": str(DATA / "twitter_complaints.jsonl"),
        "dataset_text_field": "output",
        "response_template": "\n### Response:",
        "output_dir": str(tmp_path / "out"),
        **extra,
    }


def _main(tmp_path: Path, job: dict) -> tuple[int, str]:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    log = tmp_path / "termination-log"
    env = {"SFT_TRAINER_CONFIG_JSON_PATH": str(path), "CUDA_VISIBLE_DEVICES": ""}
    previous = os.environ.get("TERMINATION_LOG_FILE")
    os.environ["TERMINATION_LOG_FILE"] = str(log)
    try:
        code = launcher.main(env)
    finally:
        os.environ.pop("TERMINATION_LOG_FILE")
        if previous is not None:
            os.environ["TERMINATION_LOG_FILE"] = previous
    return code, log.read_text() if log.exists() else ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"accelerate_launch_args": {"num_proceses": 2}}, r"Did you mean 'num_processes'"),
        ({"accelerate_launch_args": [2]}, r"must be an object"),
        ({"lora_post_process_for_vllm": True}, r"peft_method is 'none'"),
        ({"lora_post_process_for_vllm": "maybe"}, r"must be true or false"),
        ({"trackers": ["tensorbord"]}, r"Did you mean 'tensorboard'"),
    ],
)
def test_bad_jobs_exit_1_before_any_process_with_the_message_in_the_log(tmp_path, extra, message):
    code, log = _main(tmp_path, _job(tmp_path, **extra))
    assert code == 1
    assert log.startswith("Error: ") and re.search(message, log)
    assert not (tmp_path / "out").exists()


def test_missing_job_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TERMINATION_LOG_FILE", str(tmp_path / "log"))
    assert launcher.main({}) == 1
    assert "SFT_TRAINER_CONFIG_JSON_PATH" in (tmp_path / "log").read_text()


def test_planning_a_bad_job_imports_no_torch(tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps(_job(tmp_path, trackers=["tensorbord"])))
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("l", {str(BUILD / "accelerate_launch.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        code = module.main({{"SFT_TRAINER_CONFIG_JSON_PATH": {str(job)!r}}})
        print(code, sorted({{"torch", "transformers", "datasets", "accelerate"}} & set(sys.modules)))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFT_TRAINER")}
    env["TERMINATION_LOG_FILE"] = str(tmp_path / "log")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.stdout.split() == ["1", "[]"], result.stderr[-2000:]


def test_the_trainer_refuses_launcher_keys_and_names_the_launcher(tmp_path):
    values = parse_json_object(_job(tmp_path, accelerate_launch_args={"num_processes": 2}), "job")
    with pytest.raises(ConfigError, match=r"build/accelerate_launch.py.*through the launcher"):
        build_plan(build_job_config(values))


def test_the_library_never_imports_the_launcher():
    for path in (REPO / "tuning").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [n for n in names if n.split(".")[0] in ("build", "accelerate_launch")], path


@pytest.mark.parametrize(
    ("argv", "direct"),
    [
        (["--num_processes", "1", "--module", "tuning.sft_trainer"], True),
        (["--module", "tuning.sft_trainer"], True),
        (["--num_processes", "2", "--multi_gpu", "--module", "tuning.sft_trainer"], False),
        (["--config_file", "f.yaml", "--num_processes", "1", "--module", "x"], False),
        (["--num_processes", "1", "--num_machines", "2", "--module", "x"], False),
    ],
)
def test_one_plain_process_runs_the_trainer_directly(argv, direct):
    """accelerate's simple launcher would swallow SIGTERM: one process runs without it."""
    assert launcher.single_plain_process(argv) is direct
