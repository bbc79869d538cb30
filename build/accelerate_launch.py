"""The container's entry point: JSON job -> one plan -> `accelerate launch -m tuning.sft_trainer`.

Run as `python build/accelerate_launch.py` (the image's ENTRYPOINT). It behaves like
fms-hf-tuning's launcher, but strictly:

1. It reads the job from $SFT_TRAINER_CONFIG_JSON_ENV_VAR (base64 JSON, wins) or the JSON/YAML
   file named by $SFT_TRAINER_CONFIG_JSON_PATH, never unpickling anything.
2. It takes out its own keys (`accelerate_launch_args`, `lora_post_process_for_vllm`) and PLANS
   the rest before any process starts, so a bad job costs well under a second and no GPU time.
3. It maps `accelerate_launch_args` onto accelerate's own parser (unknown keys are refused with
   a did-you-mean), adds what the cluster's environment says (Kubeflow PyTorchJob or Trainer v2
   TrainJob: nodes, node rank, master address) and defaults num_processes to the visible GPUs.
4. It runs accelerate in a subprocess with the trainer's job in a private temp file and a private
   termination log, and decides the exit code from what the training processes wrote there:
   torchrun and accelerate collapse every child failure into their own code, so their code
   cannot tell a user error (1) from a crash (203).
   Several processes and no distributed mode chosen: fms-hf-tuning's FSDP defaults on GPUs.
5. On success it post-processes LoRA adapters for vLLM when asked and touches output_dir/.complete.

build/ is not a package (it must not shadow PyPA `build`); tests load this file by its path.
The library (tuning/) never imports it.
"""

from __future__ import annotations

import base64
import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__" and (Path(__file__).resolve().parents[1] / "tuning").is_dir():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout, not installed

from tuning.config.job import build_job_config
from tuning.config.parse import JSON_ENV_VAR, JSON_PATH_VAR, read_json_job
from tuning.config.schema import LAUNCHER_KEYS
from tuning.errors import (
    INTERNAL_ERROR_EXIT_CODE,
    PREEMPTED_EXIT_CODE,
    PREEMPTED_PREFIX,
    USER_ERROR_EXIT_CODE,
    ConfigError,
    UserError,
    did_you_mean,
    write_termination_log,
)
from tuning.plan import RunPlan, build_plan
from tuning.problems import Problems

ACCELERATE_KEY = "accelerate_launch_args"
VLLM_KEY = "lora_post_process_for_vllm"
assert {ACCELERATE_KEY, VLLM_KEY} == set(LAUNCHER_KEYS), "launcher keys drifted from the schema"
TRAINER_MODULE = "tuning.sft_trainer"
COMPLETE_MARKER = ".complete"
# accelerate options the launcher sets itself: a job may not point accelerate elsewhere.
LAUNCHER_OWNED = {
    "module": "the launcher always runs `-m tuning.sft_trainer`",
    "no_python": "the launcher always runs `-m tuning.sft_trainer`",
    "help": "it would print help instead of training",
}
# Options the launcher itself may add, and their kind, known without importing accelerate.
LAUNCHER_MADE = {
    "num_processes": "value",
    "num_machines": "value",
    "machine_rank": "value",
    "main_process_ip": "value",
    "main_process_port": "value",
    "multi_gpu": "flag",
    "config_file": "value",
}
# Any of these in accelerate_launch_args (or a config file) already picks a distributed mode.
DISTRIBUTED_FLAGS = ("multi_gpu", "use_fsdp", "use_deepspeed", "use_megatron_lm", "cpu", "tpu")
# The environment a Kubeflow PyTorchJob or a Trainer v2 TrainJob gives each pod. The PET_ names
# (TrainJob; PyTorchJob from training-operator 1.7) win over the older plain ones.
NODES_ENV = ("PET_NNODES", "WORLD_SIZE")
NODE_RANK_ENV = ("PET_NODE_RANK", "RANK")
MASTER_ADDR_ENV = ("PET_MASTER_ADDR", "MASTER_ADDR")
MASTER_PORT_ENV = ("PET_MASTER_PORT", "MASTER_PORT")
NPROC_ENV = "PET_NPROC_PER_NODE"
CLUSTER_ENV = (*NODES_ENV, *NODE_RANK_ENV, *MASTER_ADDR_ENV, *MASTER_PORT_ENV, NPROC_ENV)
FLAT_PARALLELISM_SWITCH = "use_parallelism_config"
FSDP_DEFAULTS_NAME = "accelerate_fsdp_defaults.yaml"
PARALLELISM_PREFIX = "parallelism_config_"
# adapter tensor suffix -> the name vLLM reads in new_embeddings.safetensors
VLLM_EMBEDDINGS = {"embed_tokens.weight": "input_embeddings", "lm_head.weight": "output_embeddings"}

logger = logging.getLogger("tuning.launcher")


def say(message: str) -> None:
    """One launcher line on stderr, so it interleaves with accelerate's and the trainer's logs."""
    print(f"tuneforge launcher: {message}", file=sys.stderr, flush=True)


# --- the job ---------------------------------------------------------------------------------


def raw_job(environ: Mapping[str, str]) -> dict[str, Any]:
    """The job exactly as written, for the trainer's copy: re-serialising parsed values would
    decode template escapes twice. Call after read_json_job accepted the same source."""
    encoded = environ.get(JSON_ENV_VAR)
    if encoded:
        text = base64.b64decode("".join(encoded.split()), validate=True).decode("utf-8")
        return json.loads(text)
    path = Path(environ[JSON_PATH_VAR])
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def read_job(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(parsed values, raw job): strict parsing first, so every syntax or key error is the
    trainer's own message."""
    found = read_json_job(environ)
    if found is None:
        raise ConfigError(
            f"No job given: set ${JSON_ENV_VAR} (base64 of the JSON job) or ${JSON_PATH_VAR} "
            "(the path of a JSON or YAML job file)."
        )
    return found[0], raw_job(environ)


def launcher_settings(values: Mapping[str, Any], problems: Problems) -> tuple[dict[str, Any], bool]:
    """The launcher's own keys, checked: (accelerate_launch_args, lora_post_process_for_vllm)."""
    args = values.get(ACCELERATE_KEY)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        problems.add(
            f"`{ACCELERATE_KEY}` must be an object of accelerate launch options, like "
            f'{{"num_processes": 2}}; got {args!r}.'
        )
        args = {}
    vllm = values.get(VLLM_KEY)
    if isinstance(vllm, str) and vllm.strip().lower() in ("true", "false"):
        vllm = vllm.strip().lower() == "true"
    if vllm is None:
        vllm = False
    if not isinstance(vllm, bool):
        problems.add(f"`{VLLM_KEY}` must be true or false; got {vllm!r}.")
        vllm = False
    return args, vllm


def plan_trainer_job(
    values: Mapping[str, Any], problems: Problems, environ: Mapping[str, str]
) -> RunPlan:
    """The trainer's plan; its problems and the launcher's own are reported together.

    Planned as one plain process: the cluster's WORLD_SIZE/RANK describe pods, not training
    processes, and the children's own launch environment (accelerate's variables) exists only
    once accelerate starts them, so launch-specific rules are checked again by each child."""
    trainer_values = {k: v for k, v in values.items() if k not in LAUNCHER_KEYS}
    plain = {k: v for k, v in environ.items() if k not in CLUSTER_ENV}
    try:
        return build_plan(build_job_config(trainer_values), plain)
    except ConfigError as exc:
        if not problems:
            raise
        problems.add(str(exc))
        problems.raise_if_any("The job")
        raise


def vllm_problem(plan: RunPlan) -> str | None:
    """fms skips the post-processing silently for other methods; a key that does nothing is
    refused instead."""
    if plan.model.peft_method != "lora":
        return (
            f"`{VLLM_KEY}` post-processes LoRA adapters, but peft_method is "
            f"{plan.model.peft_method!r}; set peft_method lora or drop the key."
        )
    return None


# --- accelerate launch options ----------------------------------------------------------------


def accelerate_parser() -> Any:
    """accelerate's own `launch` parser, raising ConfigError instead of exiting 2.
    Importing accelerate imports torch (seconds), so this runs only after the plan passed."""
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()

    def refuse(message: str) -> None:
        raise ConfigError(f"`{ACCELERATE_KEY}` is not valid for accelerate launch: {message}.")

    parser.error = refuse
    return parser


def option_kinds(parser: Any) -> dict[str, str]:
    """Every long option of the parser (as a JSON key) -> flag | negflag | append | value."""
    import argparse

    kinds = {}
    for action in parser._actions:
        if isinstance(action, argparse._StoreFalseAction):
            kind = "negflag"
        elif action.nargs == 0:
            kind = "flag"
        elif isinstance(action, argparse._AppendAction):
            kind = "append"
        else:
            kind = "value"
        for option in action.option_strings:
            if option.startswith("--"):
                kinds[option[2:].replace("-", "_")] = kind
    return kinds


def check_user_options(user: Mapping[str, Any], kinds: Mapping[str, str]) -> dict[str, Any]:
    """accelerate_launch_args with canonical (underscore) keys; every problem in one error."""
    problems = Problems()
    valid = sorted(k for k in kinds if k not in LAUNCHER_OWNED)
    options: dict[str, Any] = {}
    for key, value in user.items():
        name = str(key).replace("-", "_")
        if name in LAUNCHER_OWNED:
            problems.add(f"`{ACCELERATE_KEY}.{key}` cannot be set: {LAUNCHER_OWNED[name]}.")
        elif name not in kinds:
            # the full list only when nothing is close: Kubernetes keeps 4 KiB of the message
            hint = did_you_mean(name, valid) or f" Valid keys: {', '.join(valid)}."
            problems.add(f"`{ACCELERATE_KEY}.{key}` is not an accelerate launch option.{hint}")
        elif kinds[name] in ("flag", "negflag") and not isinstance(as_bool(value), bool):
            problems.add(
                f"`{ACCELERATE_KEY}.{key}` is a switch: give true or false, not {value!r}."
            )
        elif kinds[name] == "value" and isinstance(value, (list, dict)):
            problems.add(f"`{ACCELERATE_KEY}.{key}` takes one value, not {value!r}.")
        elif value is not None:
            options[name] = as_bool(value) if kinds[name] in ("flag", "negflag") else value
    problems.raise_if_any("The job")
    return options


def as_bool(value: Any) -> Any:
    """true/false as JSON or as text; anything else unchanged (so callers can refuse it)."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


def render_options(options: Mapping[str, Any], kinds: Mapping[str, str]) -> list[str]:
    """Options -> accelerate's command line: a true switch is the bare flag, a false one is left
    off (never `--flag False`, which argparse would read as a stray value)."""
    argv: list[str] = []
    for name, value in options.items():
        kind = kinds.get(name, "value")
        if kind == "flag":
            argv += [f"--{name}"] if value else []
        elif kind == "negflag":
            argv += [] if value else [f"--{name}"]
        elif kind == "append":
            for item in value if isinstance(value, list) else [value]:
                argv += [f"--{name}", str(item)]
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            argv += [f"--{name}", text]
    return argv


# --- the machine and the cluster --------------------------------------------------------------


def visible_gpu_count(
    environ: Mapping[str, str],
    device_files: Callable[[], Iterable[str]] = lambda: glob.glob("/dev/nvidia[0-9]*"),
    nvidia_smi: Callable[[], str | None] | None = None,
) -> int:
    """GPUs this pod may use, without importing torch: CUDA_VISIBLE_DEVICES when set (it is
    what CUDA will honour), else /dev/nvidiaN device files, else `nvidia-smi -L`."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = 0
        for item in visible.split(","):
            item = item.strip()
            if not item or item in ("-1", "NoDevFiles"):
                break  # CUDA stops at the first invalid entry
            count += 1
        return count
    found = len(list(device_files()))
    if found:
        return found
    listing = (nvidia_smi or _nvidia_smi_listing)()
    return sum(1 for line in (listing or "").splitlines() if line.startswith("GPU "))


def _nvidia_smi_listing() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _first(environ: Mapping[str, str], names: Sequence[str]) -> tuple[str, str] | None:
    for name in names:
        if environ.get(name, "").strip():
            return name, environ[name].strip()
    return None


def _whole(found: tuple[str, str], low: int) -> int:
    name, text = found
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise ConfigError(f"${name} is {text!r}; the launcher needs a whole number >= {low}.")
    return value


def cluster_options(environ: Mapping[str, str], gpus: int) -> dict[str, Any]:
    """What a Kubeflow PyTorchJob or a Trainer v2 TrainJob tells this pod, as accelerate
    options. Nodes x processes per node is the total accelerate calls num_processes.

    PyTorchJob: WORLD_SIZE = pods (older operators; newer ones also set PET_NNODES, which wins
    because their WORLD_SIZE counts processes), RANK = this pod's index, MASTER_ADDR/PORT.
    TrainJob: PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT, PET_NPROC_PER_NODE.
    Nothing set: {} (a plain single machine).
    """
    nodes_found = _first(environ, NODES_ENV)
    per_node_text = environ.get(NPROC_ENV, "").strip()
    if nodes_found is None and not per_node_text:
        return {}
    if nodes_found and ":" in nodes_found[1]:
        raise ConfigError(
            f"${nodes_found[0]} is {nodes_found[1]!r}, an elastic range; the launcher runs a "
            "fixed number of nodes: drop the job's elasticPolicy."
        )
    nodes = _whole(nodes_found, 1) if nodes_found else 1
    if per_node_text.isdigit():
        per_node = _whole((NPROC_ENV, per_node_text), 1)
    elif per_node_text in ("", "auto", "gpu"):
        per_node = max(gpus, 1)
    else:
        raise ConfigError(
            f"${NPROC_ENV} is {per_node_text!r}; give a number of processes per node, or "
            "'auto' for one per visible GPU."
        )
    options: dict[str, Any] = {}
    if nodes == 1:
        if per_node_text.isdigit():
            options["num_processes"] = per_node
        return options
    rank_found = _first(environ, NODE_RANK_ENV)
    rank = _whole(rank_found, 0) if rank_found else 0
    if rank >= nodes:
        raise ConfigError(f"${rank_found[0]} is {rank}, but there are only {nodes} nodes.")
    address = _first(environ, MASTER_ADDR_ENV)
    if address is None:
        raise ConfigError(
            f"{nodes} nodes but no master address: set $MASTER_ADDR (PyTorchJob) or "
            "$PET_MASTER_ADDR (TrainJob)."
        )
    options.update(num_machines=nodes, machine_rank=rank, main_process_ip=address[1])
    port = _first(environ, MASTER_PORT_ENV)
    if port is not None:
        options["main_process_port"] = _whole(port, 1)
    options["num_processes"] = nodes * per_node
    return options


def resolve_options(
    user: Mapping[str, Any],
    cluster: Mapping[str, Any],
    config: Mapping[str, Any],
    gpus: int,
    fsdp_defaults: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The accelerate options to launch with, and notices.

    num_processes: accelerate_launch_args, else the cluster's nodes x processes per node, else
    one per visible GPU (over a config file's fixed count: fixtures say 8, pods differ), else the
    config file's, else 1. Several processes with no distributed mode chosen (no config_file, no
    --multi_gpu/--use_fsdp/...): fms-hf-tuning's FSDP defaults on GPUs, else --multi_gpu, so
    torchrun really starts them (accelerate's simple launcher would start one)."""
    options = dict(user)
    notices = []
    for key, value in cluster.items():
        options.setdefault(key, value)
    configured = config.get("num_processes")
    if "num_processes" not in options and gpus > 0:
        options["num_processes"] = gpus
        if configured not in (None, -1, gpus):
            notices.append(
                f"the accelerate config file says num_processes {configured}, but this machine "
                f"has {gpus} visible GPUs: launching {gpus} (set `{ACCELERATE_KEY}.num_processes` "
                "to choose)."
            )
    elif "num_processes" not in options and configured in (None, -1):
        options["num_processes"] = 1
    machines = int(options.get("num_machines") or config.get("num_machines") or 1)
    total = int(options.get("num_processes") or configured or 1)
    chosen = "config_file" in options or any(options.get(f) for f in DISTRIBUTED_FLAGS)
    if (total > 1 or machines > 1) and not chosen:
        if gpus > 0 and fsdp_defaults:
            options["config_file"] = fsdp_defaults
            mode = f"fms-hf-tuning's FSDP defaults ({fsdp_defaults})"
        else:
            options["multi_gpu"] = True
            mode = "--multi_gpu (DDP through torchrun)"
        notices.append(
            f"{total} processes on {machines} machine(s) and no distributed mode chosen: using "
            f"{mode}. Set `{ACCELERATE_KEY}.config_file` to choose."
        )
    return options, notices


def fsdp_defaults_file(environ: Mapping[str, str]) -> str | None:
    """fms-hf-tuning's default accelerate config for several GPUs: $FSDP_DEFAULTS_FILE_PATH, else
    fixtures/accelerate_fsdp_defaults.yaml next to this file (the image) or above it (the repo)."""
    configured = environ.get("FSDP_DEFAULTS_FILE_PATH")
    if configured:
        if not Path(configured).is_file():
            raise ConfigError(f"$FSDP_DEFAULTS_FILE_PATH {configured!r} does not exist.")
        return configured
    here = Path(__file__).resolve().parent
    for folder in (here, here.parent):
        candidate = folder / "fixtures" / FSDP_DEFAULTS_NAME
        if candidate.is_file():
            return str(candidate)
    return None


# --- accelerate config files ------------------------------------------------------------------


def translate_flat_parallelism(
    config: Mapping[str, Any], known: Iterable[str]
) -> tuple[dict[str, Any], bool]:
    """fms's flat context-parallel form (top-level `use_parallelism_config` and
    `parallelism_config_*` keys) -> the nested `parallelism_config:` section accelerate 1.15
    loads; accelerate refuses the flat keys as unknown. Returns (config, whether it changed)."""
    flat = {k: v for k, v in config.items() if k.startswith(PARALLELISM_PREFIX)}
    switch = config.get(FLAT_PARALLELISM_SWITCH)
    if not flat and FLAT_PARALLELISM_SWITCH not in config:
        return dict(config), False
    known = set(known)
    problems = Problems()
    for key in flat:
        if key not in known:
            hint = did_you_mean(key, sorted(known))
            problems.add(f"`{key}` is not an accelerate parallelism setting.{hint}")
    if as_bool(switch) is False and flat:
        problems.add(
            f"`{FLAT_PARALLELISM_SWITCH}: false` turns off the `{PARALLELISM_PREFIX}*` keys "
            "next to it; remove one or the other."
        )
    if config.get("parallelism_config") and flat:
        problems.add(
            "both a nested `parallelism_config:` section and flat `parallelism_config_*` keys; "
            "keep one."
        )
    problems.raise_if_any("The accelerate config file")
    out = {k: v for k, v in config.items() if k not in flat and k != FLAT_PARALLELISM_SWITCH}
    if flat and as_bool(switch) is not False:
        out["parallelism_config"] = dict(flat)
    return out, True


def load_config_file(path: str) -> dict[str, Any]:
    """An accelerate config file (YAML, or JSON which YAML reads too)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        siblings = (
            sorted(p.name for p in file.parent.glob("*.y*ml")) if file.parent.is_dir() else []
        )
        hint = did_you_mean(file.name, siblings)
        listed = f" Files there: {', '.join(siblings)}." if siblings else ""
        raise ConfigError(f"`{ACCELERATE_KEY}.config_file` {path!r} does not exist.{hint}{listed}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"`{ACCELERATE_KEY}.config_file` {path!r} is not valid YAML: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"`{ACCELERATE_KEY}.config_file` {path!r} must hold a mapping of settings."
        )
    return data


def prepare_config_file(
    options: dict[str, Any], kinds: Mapping[str, str], workdir: Path
) -> tuple[dict[str, Any], list[str]]:
    """Load the config file (its values inform the defaults) and, when it uses the flat
    parallelism form, point accelerate at a translated copy. Returns (config values, notices)."""
    path = options.get("config_file")
    if not path:
        return {}, []
    config = load_config_file(str(path))
    known = [k for k in kinds if k.startswith(PARALLELISM_PREFIX)]
    translated, changed = translate_flat_parallelism(config, known)
    if not changed:
        return config, []
    import yaml

    target = workdir / f"accelerate-config{Path(str(path)).suffix or '.yaml'}"
    target.write_text(yaml.safe_dump(translated, sort_keys=False), encoding="utf-8")
    options["config_file"] = str(target)
    notice = (
        f"{path}: moved the flat `{PARALLELISM_PREFIX}*` keys under `parallelism_config:`, the "
        "form accelerate loads (fms-hf-tuning wrote them flat)."
    )
    return translated, [notice]


# --- running and exit codes -------------------------------------------------------------------


def child_environment(
    environ: Mapping[str, str], job_file: Path, termination_log: Path
) -> dict[str, str]:
    """The training processes' environment: their job is the temp file (never the base64 copy,
    which still holds the launcher's keys), their termination log is private to this run, and
    the cluster variables the launcher already turned into accelerate options are removed so
    neither torchrun nor the trainer reads them a second time."""
    env = {k: v for k, v in environ.items() if k not in CLUSTER_ENV and k != JSON_ENV_VAR}
    env[JSON_PATH_VAR] = str(job_file)
    env["TERMINATION_LOG_FILE"] = str(termination_log)
    return env


def child_messages(text: str) -> list[str]:
    """The messages the training processes wrote, each once (every rank may write the same)."""
    messages: list[str] = []
    for line in text.splitlines():
        if line.startswith(("Error:", "Internal error:", PREEMPTED_PREFIX)) or not messages:
            messages.append(line)
        else:
            messages[-1] += "\n" + line
    return list(dict.fromkeys(m.strip() for m in messages if m.strip()))


def exit_code_for(returncode: int, messages: Sequence[str]) -> int:
    """0 on success; 1 when any rank reported a user error (the others then fail with it);
    143 when a rank reported a preemption (SIGTERM/SIGINT: checkpoint saved, or a second signal)
    and none a user error, so Kubernetes restarts the pod and the rerun resumes; 203 for
    everything else, a crash or a kill included."""
    if returncode == 0:
        return 0
    if any(message.startswith("Error:") for message in messages):
        return USER_ERROR_EXIT_CODE
    if any(message.startswith(PREEMPTED_PREFIX) for message in messages):
        return PREEMPTED_EXIT_CODE
    return INTERNAL_ERROR_EXIT_CODE


def run_accelerate(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run `accelerate launch` in its own session and hand it SIGTERM/SIGINT, so a preempted
    pod's training processes hear about it once and can stop cleanly."""
    process = subprocess.Popen(list(argv), env=dict(env), start_new_session=True)

    def forward(signum: int, _frame: Any) -> None:
        process.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --- after a successful run -------------------------------------------------------------------


def adapter_dirs(plan: RunPlan) -> list[Path]:
    """Where the run left LoRA adapters: save_model_dir, output_dir and its checkpoints."""
    out = Path(plan.train.output_dir)
    places = [Path(plan.train.save_model_dir)] if plan.train.save_model_dir else []
    places += [out, *sorted(out.glob("checkpoint-*"))]
    unique = dict.fromkeys(p.resolve() for p in places)
    return [p for p in unique if (p / "adapter_model.safetensors").is_file()]


def move_new_token_embeddings(adapter_dir: Path, base_vocab_size: int) -> bool:
    """vLLM loads the rows of tokens added in training from new_embeddings.safetensors
    (input_embeddings / output_embeddings), not from full embedding matrices inside the
    adapter. Split them out as fms-hf-tuning's launcher does, but by row position (rows from
    the base vocabulary on), which stays right when the matrix was padded to a multiple.
    False when the adapter holds no embedding matrices (nothing to do, or already done)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = adapter_dir / "adapter_model.safetensors"
    with safe_open(str(path), framework="numpy") as handle:  # key names only: no torch import
        keys = list(handle.keys())
    found = {
        key: name for key in keys for end, name in VLLM_EMBEDDINGS.items() if key.endswith(end)
    }
    if not found:
        return False
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {"format": "pt"}
        tensors = {key: handle.get_tensor(key) for key in keys}
    new = {}
    for key, name in found.items():
        rows = tensors[key].shape[0]
        if rows <= base_vocab_size:
            raise UserError(
                f"{path}: `{key}` has {rows} rows, no more than the base model's vocabulary "
                f"({base_vocab_size}), so no token was added; vLLM cannot load full embedding "
                f"matrices in an adapter. Drop `{VLLM_KEY}`, or stop training the embeddings."
            )
        new[name] = tensors.pop(key)[base_vocab_size:].contiguous()
    mode = path.stat().st_mode & 0o777  # the rewritten files keep the adapter's permissions
    save_file(new, str(adapter_dir / "new_embeddings.safetensors"), metadata={"format": "pt"})
    staged = adapter_dir / ".adapter_model.safetensors.tmp"
    save_file(tensors, str(staged), metadata=metadata)
    os.replace(staged, path)
    for written in (path, adapter_dir / "new_embeddings.safetensors"):
        written.chmod(mode)
    return True


def base_vocab_size(plan: RunPlan) -> int:
    """The base model's vocabulary size: from a local config.json when there is one (no
    transformers import, seconds saved), else through transformers (a hub id, cached by the run)."""
    model = plan.model
    local = Path(model.model_name_or_path).expanduser() / "config.json"
    if local.is_file():
        config = json.loads(local.read_text(encoding="utf-8"))
        text = config.get("text_config") or {}
        return int(config.get("vocab_size") or text["vocab_size"])
    from transformers import AutoConfig

    loaded = AutoConfig.from_pretrained(
        model.model_name_or_path,
        cache_dir=model.cache_dir,
        trust_remote_code=model.trust_remote_code,
    )
    return int(loaded.get_text_config().vocab_size)


def post_process_for_vllm(plan: RunPlan) -> None:
    """lora_post_process_for_vllm: every adapter the run saved, made loadable by vLLM."""
    dirs = adapter_dirs(plan)
    if not dirs:
        say(f"{VLLM_KEY}: the run saved no LoRA adapter; nothing to post-process.")
        return
    vocab = base_vocab_size(plan)
    for adapter in dirs:
        moved = move_new_token_embeddings(adapter, vocab)
        what = "new token embeddings moved to new_embeddings.safetensors" if moved else "no change"
        say(f"{VLLM_KEY}: {adapter}: {what}.")


# --- the whole launch -------------------------------------------------------------------------


def fail(exc: BaseException, code: int) -> int:
    """Report a launcher-side failure like the trainer does: stderr plus the termination log."""
    kind = "Error" if code == USER_ERROR_EXIT_CODE else "Internal error"
    message = f"{kind}: {exc}"
    print(message, file=sys.stderr, flush=True)
    write_termination_log(message)
    return code


def prepare(environ: Mapping[str, str]) -> tuple[RunPlan, dict[str, Any], dict[str, Any], bool]:
    """Everything that can be wrong with the job, found before any process starts:
    (plan, raw trainer job, accelerate_launch_args, lora_post_process_for_vllm)."""
    values, raw = read_job(environ)
    problems = Problems()
    user_args, vllm = launcher_settings(values, problems)
    plan = plan_trainer_job(values, problems, environ)
    if vllm:
        problems.add(vllm_problem(plan))
    problems.raise_if_any("The job")
    trainer_job = {k: v for k, v in raw.items() if k not in LAUNCHER_KEYS}
    return plan, trainer_job, user_args, vllm


def accelerate_argv(
    user_args: Mapping[str, Any], environ: Mapping[str, str], workdir: Path
) -> tuple[list[str], list[str]]:
    """The `accelerate launch` command line (without the python and -m parts) and notices.
    accelerate's parser is imported only to check options a job gave."""
    parser = accelerate_parser() if user_args else None
    kinds = option_kinds(parser) if parser is not None else dict(LAUNCHER_MADE)
    user = check_user_options(user_args, kinds)
    if parser is not None:  # types and choices, as accelerate will read them
        parser.parse_args([*render_options(user, kinds), "--module", TRAINER_MODULE])
    config, notices = prepare_config_file(user, kinds, workdir)
    gpus = visible_gpu_count(environ)
    cluster = cluster_options(environ, gpus)
    options, more = resolve_options(user, cluster, config, gpus, fsdp_defaults_file(environ))
    argv = [*render_options(options, kinds), "--module", TRAINER_MODULE]
    return argv, notices + more


_DISTRIBUTED_OPTIONS = ("--config_file", "--multi_gpu", "--use_fsdp", "--use_deepspeed")


def single_plain_process(argv: Sequence[str]) -> bool:
    """One process and nothing distributed: the trainer runs directly, not under accelerate's
    simple launcher, which neither forwards SIGTERM nor waits for its child when it gets one
    (a preempted one-GPU pod would lose its checkpoint)."""

    def value(option: str, default: str) -> str:
        return argv[argv.index(option) + 1] if option in argv else default

    distributed = any(option in argv for option in _DISTRIBUTED_OPTIONS)
    return (
        not distributed
        and value("--num_processes", "1") == "1"
        and value("--num_machines", "1") == "1"
    )


def is_main_node(argv: Sequence[str]) -> bool:
    """Machine rank 0 (or a single machine): the node that marks and post-processes outputs."""
    return "--machine_rank" not in argv or argv[argv.index("--machine_rank") + 1] == "0"


def launch(environ: Mapping[str, str]) -> int:
    """Plan, launch, decide the exit code, finish the outputs."""
    plan, trainer_job, user_args, vllm = prepare(environ)
    workdir = Path(tempfile.mkdtemp(prefix="tuneforge-launch-"))
    try:
        argv, notices = accelerate_argv(user_args, environ, workdir)
        for notice in notices:
            say(notice)
        job_file = workdir / "job.json"
        job_file.write_text(json.dumps(trainer_job, default=str), encoding="utf-8")
        child_log = workdir / "termination-log"
        main_node = is_main_node(argv)
        marker = Path(plan.train.output_dir) / COMPLETE_MARKER
        if main_node and marker.exists():
            marker.unlink()  # a finished earlier run must not mark this one
        command = (
            [sys.executable, "-m", TRAINER_MODULE]
            if single_plain_process(argv)
            else [sys.executable, "-m", "accelerate.commands.launch", *argv]
        )
        say("running " + " ".join(command[1:]))
        returncode = run_accelerate(command, child_environment(environ, job_file, child_log))
        messages = child_messages(child_log.read_text() if child_log.exists() else "")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    code = exit_code_for(returncode, messages)
    if code != 0:
        for message in messages:
            write_termination_log(message)
        if not messages:
            fail(
                RuntimeError(
                    f"accelerate launch exited with code {returncode} and no training process "
                    "reported why; see the log above."
                ),
                code,
            )
        return code
    if main_node:
        if vllm:
            post_process_for_vllm(plan)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    return 0


def main(environ: Mapping[str, str] | None = None) -> int:
    """Exit codes: 0 success, 1 user error (here or on any rank), 143 preempted (a rank saved a
    checkpoint and stopped on SIGTERM/SIGINT), 203 anything else."""
    try:
        return launch(os.environ if environ is None else environ)
    except UserError as exc:
        return fail(exc, USER_ERROR_EXIT_CODE)
    except Exception as exc:  # anything unforeseen in the launcher itself is internal
        logger.exception("launcher failed")
        return fail(exc, INTERNAL_ERROR_EXIT_CODE)


if __name__ == "__main__":
    sys.exit(main())
