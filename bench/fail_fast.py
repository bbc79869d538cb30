"""How fast a bad job fails: each cheap mistake in tests/cheap_mistakes.py vs `import torch`.

A typo in a flag, a missing extra or a truncated checkpoint should cost the user seconds, not the
minutes it takes to load data and weights before the error surfaces. The tests check that each
mistake fails with exit 1, the right message and an untouched output_dir; this measures how long
the user waits for it. The yardstick is the floor any run of the CLI pays anyway: a bare
`python -c "import torch, transformers"`. A case is "ok" when it exits 1, stderr matches the
case's message, {out} was never created and its median wall time is under half that floor.

Each case runs `python -m tuning.sft_trainer ...` in a fresh process (offline, its own temp
folders), REPEATS times; a baseline run precedes every case run (baseline, case, baseline,
case ...) so machine drift hits both alike. A run that has not exited after TIMEOUT_S is killed
and recorded as exit "timeout". Prints medians (min and max too), ratios and the machine; appends
one JSON line per run to bench/results.jsonl (or --json PATH).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
CASES_FILE = REPO / "tests" / "cheap_mistakes.py"
BASELINE = [sys.executable, "-c", "import torch, transformers"]
TIMEOUT_S = 120.0
OK_RATIO = 0.5


@dataclass
class Run:
    exit: int | str  # the exit code, or "timeout"
    seconds: float
    stderr: str
    untouched: bool = True


@dataclass
class Result:
    id: str
    runs: list[Run] = field(default_factory=list)
    matched: list[bool] = field(default_factory=list)


def load_cases() -> ModuleType:
    """tests/ is not a package: load the shared case table from its path."""
    spec = importlib.util.spec_from_file_location("cheap_mistakes", CASES_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building Mistake
    spec.loader.exec_module(module)
    return module


def child_env(termination_log: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TERMINATION_LOG_FILE=str(termination_log),
    )
    return env


def timed(cmd: list[str], env: dict[str, str]) -> Run:
    """Wall time until the process exits; past TIMEOUT_S its whole process group is killed."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # so a timeout also ends any workers it started
    )
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT_S)
        code: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        code = "timeout"
    return Run(exit=code, seconds=time.perf_counter() - start, stderr=stderr)


def run_case(case, argv_for, scratch: Path, env_log: Path) -> Run:
    """One run of one case in fresh folders: {tmp} exists (and is set up), {out} does not."""
    tmp = scratch / "tmp"
    tmp.mkdir(parents=True)
    out = scratch / "out"
    if case.setup is not None:
        case.setup(tmp)
    values = {
        "model": str(REPO / "artifacts" / "tiny-llama"),
        "io": str(REPO / "data_configs" / "data" / "input_output.jsonl"),
        "data": str(REPO / "data_configs" / "data"),
        "out": str(out),
        "tmp": str(tmp),
    }
    cmd = [sys.executable, "-m", "tuning.sft_trainer", *argv_for(case, values)]
    run = timed(cmd, child_env(env_log))
    run.untouched = not out.exists()
    return run


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def exit_of(runs: list[Run]) -> int | str:
    """The exit code when every repeat agrees, else all of them ("1,0,timeout")."""
    codes = [run.exit for run in runs]
    return codes[0] if len(set(codes)) == 1 else ",".join(str(code) for code in codes)


def last_line(text: str, width: int = 90) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else "(no stderr)"
    return line if len(line) <= width else line[: width - 3] + "..."


def parse_args(argv: list[str] | None, known: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per case (default 5)")
    parser.add_argument("--only", default="", help="comma-separated case ids to run")
    parser.add_argument(
        "--json", default=str(REPO / "bench" / "results.jsonl"), help="append the record here"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when any case is not ok")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.only = [name for name in args.only.split(",") if name]
    unknown = [name for name in args.only if name not in known]
    if unknown:
        parser.error(f"unknown case id(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    table = load_cases()
    args = parse_args(argv, [case.id for case in table.CASES])
    cases = [case for case in table.CASES if not args.only or case.id in args.only]
    machine = {
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    results = {case.id: Result(case.id) for case in cases}
    baseline: list[float] = []
    root = Path(tempfile.mkdtemp(prefix="fail_fast-"))
    try:
        # Repeats outermost: each case's samples spread over the whole run, like the baseline's.
        for repeat in range(args.repeats):
            for case in cases:
                scratch = root / f"{case.id}-{repeat}"
                scratch.mkdir()
                log = scratch / "termination.log"
                baseline.append(timed(BASELINE, child_env(log)).seconds)
                run = run_case(case, table.argv_for, scratch, log)
                results[case.id].runs.append(run)
                results[case.id].matched.append(
                    re.search(case.match, run.stderr, re.DOTALL) is not None
                )
                print(
                    f"  [{repeat + 1}/{args.repeats}] {case.id}: exit {run.exit}, "
                    f"{run.seconds:.2f}s",
                    file=sys.stderr,
                    flush=True,
                )
                shutil.rmtree(scratch, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base = spread(baseline)
    rows = []
    for case in cases:
        result = results[case.id]
        times = spread([run.seconds for run in result.runs])
        row = {
            "id": case.id,
            "exit": exit_of(result.runs),
            "matched": all(result.matched),
            "untouched": all(run.untouched for run in result.runs),
            "median_s": times["median"],
            "min_s": times["min"],
            "max_s": times["max"],
            "ratio": times["median"] / base["median"],
        }
        row["ok"] = (
            row["exit"] == 1 and row["matched"] and row["untouched"] and row["ratio"] < OK_RATIO
        )
        rows.append(row)

    width = max(len("case"), *(len(row["id"]) for row in rows))
    header = (
        f"{'case':<{width}}  {'exit':>7}  {'matched':>7}  {'untouched':>9}  "
        f"{'median s':>8}  {'min s':>6}  {'max s':>6}  {'ratio':>6}  verdict"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['id']:<{width}}  {row['exit']!s:>7}  {'yes' if row['matched'] else 'no':>7}  "
            f"{'yes' if row['untouched'] else 'no':>9}  {row['median_s']:8.2f}  "
            f"{row['min_s']:6.2f}  {row['max_s']:6.2f}  {row['ratio']:6.2f}  "
            f"{'ok' if row['ok'] else 'NOT OK'}"
        )
    failing = [row for row in rows if not row["ok"]]
    if failing:
        print("\nnot ok, last stderr line of the last run:")
        for row in failing:
            print(f"  {row['id']:<{width}}  {last_line(results[row['id']].runs[-1].stderr)}")
    worst = max(row["ratio"] for row in rows)
    ok = len(rows) - len(failing)
    print(
        f"\n{ok}/{len(rows)} cases ok (exit 1, message matched, output_dir untouched, ratio < "
        f"{OK_RATIO}); worst ratio {worst:.2f}; baseline `import torch, transformers` median "
        f"{base['median']:.2f}s (min {base['min']:.2f}, max {base['max']:.2f}, "
        f"{len(baseline)} runs); {args.repeats} repeat(s); machine {machine['arch']} "
        f"{machine['cpus']} cpus, python {machine['python']}"
    )

    record = {
        "bench": "fail_fast",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "repeats": args.repeats,
        "baseline_s": base,
        "cases": [{key: value for key, value in row.items() if key != "ok"} for row in rows],
        "worst_ratio": worst,
    }
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    with open(json_path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    return 1 if args.strict and failing else 0


if __name__ == "__main__":
    sys.exit(main())
