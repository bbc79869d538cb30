"""Real multi-process runs on CPU: 2 ranks over gloo started by `accelerate launch` with
fixtures/cpu_2proc.yaml, a restart that resumes, and a two-node run simulated on localhost.

Observing the ranks from outside, without touching tuning/:
- `--tee 3 --log_dir D` (accelerate passes both to torchrun) writes each rank's stdout/stderr
  to D/<run>/attempt_0/<local rank>/, so every log line is attributed to its process;
- tests/e2e/_rank_dump/sitecustomize.py is put on PYTHONPATH: in each rank it records the
  digest of the weights when Trainer.train starts and returns, the rows of every batch the rank
  trained on, and (Python audit hooks) every file it opened for writing, renamed, created or
  removed under the watched folder; it writes them to <probe>/rank<R>.json at exit. Files
  written from C++/Rust (model.safetensors, torch.save's .pt/.pth) do not show up there.
The runs are shared by the tests through module-scoped fixtures; each fixture snapshots what the
tests read right after its run, so a later run into the same output_dir changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FIXTURE = "fixtures/cpu_2proc.yaml"
PROBE_PATH = Path(__file__).resolve().parent / "_rank_dump"
ROWS = 16  # distinct rows: 4 steps x 2 ranks x 2 per device = exactly one epoch
TIMEOUT = 420
_LAUNCH_ENV_PREFIXES = ("ACCELERATE_", "FSDP_", "PARALLELISM_CONFIG_")
_LAUNCH_ENV_NAMES = {
    *("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"),
    *("SFT_TRAINER_CONFIG_JSON_PATH", "SFT_TRAINER_CONFIG_JSON_ENV_VAR"),
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Launch:
    """One `accelerate launch` (one "node"), with what its ranks logged and recorded."""

    returncode: int
    output: str  # the launcher's console: stdout + stderr
    logs: dict[int, str]  # local rank -> that process's stdout + stderr (from --log_dir)
    probes: dict[int, dict]  # global rank -> the probe's record (sitecustomize.py)

    def check(self) -> None:
        assert self.returncode == 0, self.output[-6000:]


@dataclass
class Snapshot:
    """Files of a finished run, read right after it."""

    texts: dict[str, str] = field(default_factory=dict)  # relative path -> text
    files: set[str] = field(default_factory=set)  # every file and folder under the root


def _snapshot(root: Path, names: list[str]) -> Snapshot:
    snap = Snapshot(files={str(p.relative_to(root)) for p in root.rglob("*")})
    for name in names:
        path = root / name
        if path.is_file():
            snap.texts[name] = path.read_text()
    return snap


def _env(work: Path, watch: Path, cache: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_LAUNCH_ENV_PREFIXES) and k not in _LAUNCH_ENV_NAMES
    }
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join([str(PROBE_PATH), str(REPO)]),
        TUNEFORGE_TEST_RANK_DUMP=str(work / "probe"),
        TUNEFORGE_TEST_WATCH=str(watch),
        # datasets' INFO messages say when a processing step runs and when its cache is reused
        DATASETS_VERBOSITY="info",
        HF_DATASETS_CACHE=str(cache),
        TERMINATION_LOG_FILE=str(work / "termination-log"),
    )
    return env


def _command(launcher: list[str], log_dir: Path, job: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", FIXTURE,
        *launcher, "--tee", "3", "--log_dir", str(log_dir), "-m", "tuning.sft_trainer", *job,
    ]  # fmt: skip


def _rank_logs(log_dir: Path) -> dict[int, str]:
    logs: dict[int, str] = {}
    for folder in sorted(log_dir.glob("*/attempt_*/*")):
        if folder.is_dir() and folder.name.isdigit():
            texts = [(folder / n).read_text(errors="replace") for n in ("stdout.log", "stderr.log")]
            logs[int(folder.name)] = logs.get(int(folder.name), "") + "\n".join(texts)
    return logs


def _probes(probe_dir: Path) -> dict[int, dict]:
    records = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("rank*.json"))]
    return {record["rank"]: record for record in records}


def _start(launcher: list[str], job: list[str], work: Path, watch: Path, cache: Path):
    """Start one `accelerate launch`; its console goes to a file (a pipe nobody reads while the
    test waits for another node could fill up and stall the run)."""
    work.mkdir(parents=True, exist_ok=True)
    command = _command(launcher, work / "logs", job)
    with open(work / "console.log", "w") as console:
        return subprocess.Popen(
            command, cwd=REPO, env=_env(work, watch, cache), text=True,
            stdout=console, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _finish(process, work: Path, timeout: float = TIMEOUT) -> Launch:
    try:
        process.wait(timeout=max(timeout, 1))
        note = ""
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        note = f"\n[test] killed after {timeout:.0f}s"
    output = (work / "console.log").read_text(errors="replace") + note
    return Launch(process.returncode, output, _rank_logs(work / "logs"), _probes(work / "probe"))


def _launch(launcher: list[str], job: list[str], work: Path, watch: Path, cache: Path) -> Launch:
    return _finish(_start(launcher, job, work, watch, cache), work)


def _job(model: Path, data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--training_data_path", str(data),
        "--output_dir", str(out), "--torch_dtype", "float32", "--use_cpu", "true",
        "--per_device_train_batch_size", "2", "--max_steps", str(steps),
        "--logging_strategy", "steps", "--logging_steps", "1",
        "--save_strategy", "steps", "--save_steps", "2", "--max_seq_length", "128", *extra,
    ]  # fmt: skip


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def _steps(text: str) -> list[int]:
    return [r["data"]["step"] for r in _records(text)]


def _touched(probe: dict) -> list[list]:
    """The probe's write events: [kind, path relative to the watched folder, (rename target)]."""
    return probe["writes"]


def _writers_of(probes: dict[int, dict], name: str) -> list[int]:
    """Ranks that wrote the file `name` (opened it for writing or renamed something onto it),
    once per write."""
    return [
        rank
        for rank, probe in probes.items()
        for event in _touched(probe)
        if (event[0] == "open" and event[1] == name) or (event[0] == "rename" and event[2] == name)
    ]


# ---------------------------------------------------------------------------------------------
# the runs


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("multiprocess")
    rows = [{"input": f"Add {i} and {i + 3}.", "output": f" {2 * i + 3}"} for i in range(ROWS)]
    (base / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return base


@dataclass
class Run:
    launch: Launch
    out: Path
    model: Path
    snap: Snapshot  # of the watched folder (output_dir and save_model_dir)


RUN_FILES = ["out/training_logs.jsonl", "out/run_summary.json", "out/tuneforge_config.json"]
RUN_FILES += [f"out/checkpoint-{n}/trainer_state.json" for n in (2, 4, 6)]


@pytest.fixture(scope="module")
def first_run(work, tiny_model_dir) -> Run:
    """4 steps on 2 ranks into an output_dir nested two levels under a folder that does not
    exist yet (the run creates both), with a save_model_dir next to it."""
    fresh = work / "fresh"
    assert not fresh.exists()
    out, model = fresh / "out", fresh / "model"
    job = _job(tiny_model_dir, work / "data.jsonl", out, 4, "--save_model_dir", str(model))
    port = ["--main_process_port", str(_free_port())]
    launch = _launch(port, job, work / "run1", fresh, work / "hf-datasets")
    launch.check()
    return Run(launch, out, model, _snapshot(fresh, RUN_FILES))


@pytest.fixture(scope="module")
def resumed_run(work, tiny_model_dir, first_run) -> Run:
    """The same command again with --max_steps 6, into the same output_dir."""
    job = _job(
        tiny_model_dir, work / "data.jsonl", first_run.out, 6, "--save_model_dir",
        str(first_run.model),
    )  # fmt: skip
    port = ["--main_process_port", str(_free_port())]
    launch = _launch(port, job, work / "run2", work / "fresh", work / "hf-datasets")
    launch.check()
    return Run(launch, first_run.out, first_run.model, _snapshot(work / "fresh", RUN_FILES))


@pytest.fixture(scope="module")
def two_node_run(work, tiny_model_dir) -> tuple[Launch, Launch, Run]:
    """Two `accelerate launch` "nodes" of one process each, started together, rank 0's node
    hosting the rendezvous on 127.0.0.1."""
    root = work / "two-nodes"
    out = root / "out"
    job = _job(tiny_model_dir, work / "data.jsonl", out, 4)
    port = str(_free_port())
    started = time.perf_counter()
    processes = []
    for machine_rank in (0, 1):
        launcher = [
            "--num_machines", "2", "--machine_rank", str(machine_rank), "--num_processes", "2",
            "--main_process_ip", "127.0.0.1", "--main_process_port", port,
        ]  # fmt: skip
        node = work / f"node{machine_rank}"
        processes.append((_start(launcher, job, node, root, work / "hf-datasets-two-nodes"), node))
    (process0, work0), (process1, work1) = processes
    node0 = _finish(process0, work0)
    # node 1 cannot finish without node 0: do not wait for it long when node 0 failed
    left = TIMEOUT - (time.perf_counter() - started) if node0.returncode == 0 else 5
    node1 = _finish(process1, work1, timeout=left)
    node0.check()
    node1.check()
    return node0, node1, Run(node0, out, root / "model", _snapshot(root, RUN_FILES))


# ---------------------------------------------------------------------------------------------
# two processes, one node


def test_two_processes_ran(first_run):
    launch = first_run.launch
    assert sorted(launch.logs) == [0, 1], launch.output[-3000:]
    for rank in (0, 1):
        assert f"tuneforge process: rank {rank} of world size 2" in launch.logs[rank]
        assert launch.probes[rank]["world_size"] == 2
    assert sorted(launch.probes) == [0, 1]


def test_data_is_processed_once_by_the_main_process(first_run):
    # With DATASETS_VERBOSITY=info, datasets logs "Caching processed dataset at <cache file>"
    # when a processing step really runs and writes its result, and "Loading cached processed
    # dataset at <cache file>" when it reuses that file. The datasets cache is new for this run,
    # so: rank 0 processes first (PartialState.main_process_first in tuning/data/pipeline.py)
    # and writes every cache file; rank 1 waits and loads exactly those files. Processing on
    # both ranks at once would log "Caching" twice and "Loading" never.
    logs = first_run.launch.logs
    cache_file = re.compile(r"cache-([0-9a-f]+)")

    def files(rank: int, message: str) -> set[str]:
        lines = [line for line in logs[rank].splitlines() if message in line]
        return {match for line in lines for match in cache_file.findall(line)}

    written = files(0, "Caching processed dataset at")
    assert written, logs[0][-3000:]
    assert files(0, "Loading cached processed dataset at") == set()
    assert files(1, "Caching processed dataset at") == set()
    assert files(1, "Loading cached processed dataset at") == written
    assert "Generating train split" in logs[0] and "Generating train split" not in logs[1]
    assert "Found cached dataset json" in logs[1]


def test_each_rank_trains_on_its_own_rows(first_run):
    probes = first_run.launch.probes
    seen = {}
    for rank in (0, 1):
        (train,) = probes[rank]["trains"]
        assert [len(batch) for batch in train["batches"]] == [2, 2, 2, 2]
        seen[rank] = [tuple(row) for batch in train["batches"] for row in batch]
        assert len(set(seen[rank])) == 8
    assert not set(seen[0]) & set(seen[1])  # the sampler split the data between the ranks
    assert len(set(seen[0]) | set(seen[1])) == ROWS  # together: the whole dataset once
    # the global batch is 2 ranks x 2 rows, so 4 steps are one epoch (one process: half of one)
    logs = _records(first_run.snap.texts["out/training_logs.jsonl"])
    assert [r["data"]["epoch"] for r in logs] == [0.25, 0.5, 0.75, 1.0]


def test_gradients_are_synchronised(first_run):
    probes = first_run.launch.probes
    (rank0,), (rank1,) = probes[0]["trains"], probes[1]["trains"]
    assert rank0["global_step"] == rank1["global_step"] == 4
    assert rank0["weights_before"] == rank1["weights_before"]
    assert rank0["weights_after"] != rank0["weights_before"]  # it trained
    # different rows on each rank, yet the same weights: the gradients were averaged (DDP)
    assert rank0["weights_after"] == rank1["weights_after"]


def test_run_files_written_once_by_the_main_process(first_run):
    probes, snap = first_run.launch.probes, first_run.snap
    assert _steps(snap.texts["out/training_logs.jsonl"]) == [1, 2, 3, 4]
    assert set(_writers_of(probes, "out/training_logs.jsonl")) == {0}
    assert _writers_of(probes, "out/tuneforge_config.json") == [0]
    assert json.loads(snap.texts["out/tuneforge_config.json"])["max_steps"] == 4
    assert _writers_of(probes, "out/run_summary.json") == [0]
    summary = json.loads(snap.texts["out/run_summary.json"])
    assert summary["global_step"] == 4 and summary["resumed_from"] is None
    assert summary["save_model_dir"] == str(first_run.model.resolve())
    assert isinstance(summary["train_loss"], float) and summary["metrics"]["epoch"] == 1.0
    # What rank 1 touches: its own RNG state in each checkpoint (transformers' _save_rng_state:
    # makedirs(checkpoint, exist_ok=True), then torch.save of rng_state_1.pth), and the
    # save_model_dir's parent (saving.py: parent.mkdir(parents=True, exist_ok=True), safe when
    # ranks race). Nothing else: no log line, config, summary, checkpoint or model file.
    allowed = re.compile(r"out/checkpoint-\d+(/rng_state_1\.pth)?|\.")
    unexpected = [e for e in _touched(probes[1]) if not allowed.fullmatch(e[1] or "")]
    assert unexpected == []
    assert all(e[0] in ("os.mkdir", "open") for e in _touched(probes[1]))


def test_checkpoints_are_complete(first_run):
    snap = first_run.snap
    checkpoints = sorted(f for f in snap.files if re.fullmatch(r"out/checkpoint-\d+", f))
    assert checkpoints == ["out/checkpoint-2", "out/checkpoint-4"]
    for step in (2, 4):
        folder = f"out/checkpoint-{step}"
        state = json.loads(snap.texts[f"{folder}/trainer_state.json"])
        assert state["global_step"] == step
        assert _writers_of(first_run.launch.probes, f"{folder}/trainer_state.json") == [0]
        names = {"model.safetensors", "optimizer.pt", "scheduler.pt", "config.json"}
        names |= {"rng_state_0.pth", "rng_state_1.pth"}  # one per rank
        assert {f"{folder}/{name}" for name in names} <= snap.files


def test_save_model_dir_written_once_and_whole(first_run):
    snap, probes = first_run.snap, first_run.launch.probes
    assert {"model/config.json", "model/model.safetensors"} <= snap.files
    leftovers = [f for f in snap.files if "/" not in f and f.startswith(".")]
    assert leftovers == []  # no .model.staging, no .model.old-*
    assert _writers_of(probes, "model") == [0]  # moved into place once, by rank 0
    assert not [e for e in _touched(probes[1]) if "model" in (e[1] or "").split("/")[0]]


def test_output_dir_that_does_not_exist_yet_is_created_without_a_race(first_run):
    # The run succeeded although neither output_dir nor its parent existed (see first_run).
    # Rank 0 created them; rank 1 never tried to create output_dir or the save_model_dir (it
    # only runs saving.py's parent.mkdir(parents=True, exist_ok=True) on their parent ".",
    # which tolerates a concurrent creator).
    created = [e[1] for e in _touched(first_run.launch.probes[0]) if e[0] == "os.mkdir"]
    assert "out" in created
    created = [e[1] for e in _touched(first_run.launch.probes[1]) if e[0] == "os.mkdir"]
    assert not set(created) & {"out", "model", ".model.staging"}
    assert {"out", "model"} <= first_run.snap.files


def test_restart_resumes_from_the_last_checkpoint(first_run, resumed_run):
    launch, snap = resumed_run.launch, resumed_run.snap
    checkpoint = str(first_run.out / "checkpoint-4")
    summary = json.loads(snap.texts["out/run_summary.json"])
    assert summary["resumed_from"] == checkpoint
    assert summary["global_step"] == 6
    for rank in (0, 1):  # both ranks resume from the same checkpoint
        assert f"Resuming from {checkpoint}" in launch.logs[rank]
        (train,) = launch.probes[rank]["trains"]
        assert len(train["batches"]) == 2  # steps 5 and 6 only
    (rank0,), (rank1,) = launch.probes[0]["trains"], launch.probes[1]["trains"]
    assert rank0["weights_after"] == rank1["weights_after"]
    before = first_run.snap.texts["out/training_logs.jsonl"].splitlines()
    after = snap.texts["out/training_logs.jsonl"].splitlines()
    assert after[: len(before)] == before  # the first run's lines are untouched
    assert _steps("\n".join(after[len(before) :])) == [5, 6]
    assert json.loads(snap.texts["out/checkpoint-6/trainer_state.json"])["global_step"] == 6
    assert {"model/config.json", "model/model.safetensors"} <= snap.files
    assert [f for f in snap.files if "/" not in f and f.startswith(".")] == []


# ---------------------------------------------------------------------------------------------
# two nodes of one process each, on localhost


def test_two_nodes_on_localhost(first_run, two_node_run):
    node0, node1, run = two_node_run
    assert sorted(node0.logs) == [0] and sorted(node1.logs) == [0]  # one process per node
    assert "tuneforge process: rank 0 of world size 2 (local rank 0)" in node0.logs[0]
    assert "tuneforge process: rank 1 of world size 2 (local rank 0)" in node1.logs[0]
    (rank0,) = node0.probes[0]["trains"]
    (rank1,) = node1.probes[1]["trains"]
    assert rank0["weights_after"] == rank1["weights_after"] != rank0["weights_before"]
    logs = run.snap.texts["out/training_logs.jsonl"]
    assert _steps(logs) == [1, 2, 3, 4]
    assert set(_writers_of({**node0.probes, **node1.probes}, "out/training_logs.jsonl")) == {0}
    # the same job on the same world size sees the same batches: the same losses as 1 node x 2
    single = [r["data"]["value"] for r in _records(first_run.snap.texts["out/training_logs.jsonl"])]
    assert [r["data"]["value"] for r in _records(logs)] == pytest.approx(single, rel=1e-4)
    assert json.loads(run.snap.texts["out/run_summary.json"])["global_step"] == 4


# ---------------------------------------------------------------------------------------------
# --do_dataprocessing_only


def test_processed_data_is_written_by_the_main_process_only(work, tiny_model_dir):
    out = work / "dataprocessing" / "out"
    job = [
        "--model_name_or_path", str(tiny_model_dir), "--training_data_path",
        str(work / "data.jsonl"), "--output_dir", str(out), "--use_cpu", "true",
        "--max_seq_length", "128", "--do_dataprocessing_only", "true",
    ]  # fmt: skip
    port = ["--main_process_port", str(_free_port())]
    launch = _launch(port, job, work / "run-dp", out.parent, work / "hf-datasets")
    launch.check()
    from datasets import load_from_disk

    assert len(load_from_disk(str(out / "processed_data" / "train"))) == ROWS
    rank1 = [e for e in _touched(launch.probes[1]) if (e[1] or "").startswith("out")]
    assert rank1 == [], rank1
