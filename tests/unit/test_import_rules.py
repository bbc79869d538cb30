"""The layout's import rules (../shared/DESIGN.md), read from the code's own import statements.

Why: planning must fail a bad job in well under a second, so it may not import torch,
transformers or datasets; data and models stay independent so each can change alone; the
library never depends on its tools (preview, docs) or launchers; and no two modules import
each other.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "tuning"
HEAVY = ("torch", "transformers", "datasets", "trl", "peft", "accelerate")


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every tuning module this file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    modules = {_module(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules}


GRAPH = {_module(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize(
    ("importer", "imported"),
    [("tuning.data", "tuning.models"), ("tuning.models", "tuning.data")],
)
def test_data_and_models_do_not_import_each_other(importer, imported):
    bad = {
        module: sorted(n for n in names if _under(n, imported))
        for module, names in GRAPH.items()
        if _under(module, importer) and any(_under(n, imported) for n in names)
    }
    assert bad == {}


def test_the_library_does_not_import_its_tools_or_launchers():
    outside = ("tuning.tools", "tuning.launch")
    bad = {
        module: sorted(n for n in names if any(_under(n, o) for o in outside))
        for module, names in GRAPH.items()
        if not any(_under(module, o) for o in outside)
        and any(_under(n, o) for n in names for o in outside)
    }
    assert bad == {}


def test_no_two_modules_import_each_other():
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in GRAPH.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    # packages import their own modules (re-exports); a cycle through __init__ is not a circle
    circles = sorted(
        module
        for module in GRAPH
        if module in reach(module) and not (PACKAGE / Path(*module.split(".")[1:])).is_dir()
    )
    assert circles == []


def test_planning_imports_nothing_heavy(tiny_model_dir, tmp_path):
    data = REPO / "data_configs"
    code = f"""
import json, sys
from tuning.config.job import build_job_config
from tuning.config.parse import collect_values
from tuning.plan import build_plan
import tuning.sft_trainer
for argv in (
    ["--training_data_path", {str(data / "data" / "input_output.jsonl")!r}, "--peft_method", "lora"],
    ["--data_config", {str(data / "mixing_with_validation.yaml")!r}, "--eval_strategy", "epoch"],
    ["--training_data_path", {str(data / "data" / "chat.jsonl")!r}, "--report_to", "none"],
):
    argv += ["--model_name_or_path", {str(tiny_model_dir)!r}, "--output_dir", {str(tmp_path)!r}]
    build_plan(build_job_config(collect_values(argv, environ={{}})))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
