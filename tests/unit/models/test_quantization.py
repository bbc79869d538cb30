"""Tests for tuning/models/quantization.py: the MXFP4 rules the plan applies before any weights.

Why: `--quantization_method mxfp4` on a plain checkpoint, or `--dequantize false` where the
MXFP4 experts cannot stay quantized and train (a transformers that refuses to train MXFP4, no GPU,
or one older than Hopper), would otherwise fail deep inside transformers after the data was
tokenized. The GPU is read with nvidia-smi and transformers from its source, never imported, so
planning stays light; tests replace the readers.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tuning.config.job import build_job_config
from tuning.config.parse import collect_values
from tuning.errors import ConfigError
from tuning.models import quantization
from tuning.models.plan import build_model_plan
from tuning.models.quantization import (
    gpu_compute_capabilities,
    mxfp4_problem,
    native_mxfp4_problem,
)
from tuning.problems import Problems


def _checkpoint(folder: Path, quant_method: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "gpt_oss"}
    if quant_method:
        config["quantization_config"] = {"quant_method": quant_method}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _capabilities(monkeypatch, value, *, trainable: bool = True) -> list[int]:
    """Replace the GPU reader (and say whether transformers trains MXFP4); returns a list that
    counts the reader's calls."""
    calls = []

    def reader(environ=None):
        calls.append(1)
        return value

    monkeypatch.setattr(quantization, "gpu_compute_capabilities", reader)
    monkeypatch.setattr(quantization, "transformers_trains_mxfp4", lambda: trainable)
    return calls


def test_mxfp4_flag_needs_an_mxfp4_checkpoint(tmp_path):
    problem = mxfp4_problem(str(_checkpoint(tmp_path / "plain", None)))
    assert problem and "not stored in MXFP4" in problem and "quant_method None" in problem
    assert mxfp4_problem(str(_checkpoint(tmp_path / "mxfp4", "mxfp4"))) is None
    assert mxfp4_problem("openai/gpt-oss-20b") is None  # a hub id: transformers checks it


def test_dequantize_true_never_asks_for_a_gpu(monkeypatch):
    calls = _capabilities(monkeypatch, [])
    assert native_mxfp4_problem(True) is None
    assert calls == []


@pytest.mark.parametrize("capabilities", [[(9, 0)], [(10, 0)], [(9, 0), (12, 1)]])
def test_dequantize_false_is_allowed_on_hopper_or_newer(monkeypatch, capabilities):
    _capabilities(monkeypatch, capabilities)
    assert native_mxfp4_problem(False) is None


@pytest.mark.parametrize(
    ("capabilities", "found"),
    [
        ([], r"no NVIDIA GPU is visible"),
        (None, r"could not be read"),
        ([(8, 0)], r"compute capability 8\.0\b"),
        ([(9, 0), (8, 9)], r"compute capability 9\.0, 8\.9"),  # every GPU must qualify
    ],
)
def test_dequantize_false_elsewhere_is_a_clear_error(monkeypatch, capabilities, found):
    _capabilities(monkeypatch, capabilities)
    problem = native_mxfp4_problem(False)
    assert problem is not None
    assert problem.startswith("--dequantize false keeps the MXFP4 experts quantized")
    assert "9.0 or newer (Hopper or later)" in problem
    assert "Use --dequantize true" in problem
    assert re.search(found, problem)


def test_dequantize_false_needs_a_transformers_that_trains_mxfp4(monkeypatch):
    calls = _capabilities(monkeypatch, [(9, 0)], trainable=False)
    problem = native_mxfp4_problem(False)
    assert problem is not None and "cannot train an MXFP4 model" in problem
    assert "Use --dequantize true" in problem
    assert calls == []  # the GPU does not matter then


def test_installed_transformers_cannot_train_mxfp4():
    # transformers 5.24: Mxfp4HfQuantizer.is_trainable returns False, so its Trainer refuses an
    # MXFP4 model even with LoRA. When an upgrade changes that, --dequantize false opens up on
    # Hopper and this test says so.
    assert quantization.transformers_trains_mxfp4() is False


@pytest.mark.parametrize(
    ("body", "trainable"),
    [
        ("    @property\n    def is_trainable(self):\n        return False\n", False),
        ("    @property\n    def is_trainable(self):\n        return True\n", True),
        ("    def is_trainable(self):\n        return self.dequantize or False\n", True),
        ("    pass\n", True),  # moved elsewhere: never block a run on a guess
    ],
)
def test_trainability_is_read_from_the_transformers_source(monkeypatch, tmp_path, body, trainable):
    package = tmp_path / "transformers"
    (package / "quantizers").mkdir(parents=True)
    (package / "quantizers" / "quantizer_mxfp4.py").write_text(f"class Mxfp4HfQuantizer:\n{body}")

    class Spec:
        submodule_search_locations = [str(package)]

    monkeypatch.setattr(quantization.importlib.util, "find_spec", lambda name: Spec())
    assert quantization.transformers_trains_mxfp4() is trainable


def _plan_problems(argv: list[str]) -> Problems:
    job = build_job_config(collect_values(argv, environ={}))
    problems = Problems()
    build_model_plan(job, problems)
    return problems


def test_the_plan_refuses_dequantize_false_without_hopper(monkeypatch, tmp_path):
    _capabilities(monkeypatch, [])
    model = str(_checkpoint(tmp_path, "mxfp4"))
    flags = ["--model_name_or_path", model, "--quantization_method", "mxfp4"]
    assert not _plan_problems(flags).items  # --dequantize true is the default
    problems = _plan_problems([*flags, "--dequantize", "false"])
    with pytest.raises(ConfigError, match=r"--dequantize false .* no NVIDIA GPU is visible"):
        problems.raise_if_any()
    _capabilities(monkeypatch, [(9, 0)])
    assert not _plan_problems([*flags, "--dequantize", "false"]).items


def test_the_plan_reports_both_mxfp4_problems_at_once(monkeypatch, tmp_path):
    _capabilities(monkeypatch, [(8, 0)])
    model = str(_checkpoint(tmp_path, None))
    problems = _plan_problems(
        ["--model_name_or_path", model, "--quantization_method", "mxfp4", "--dequantize", "false"]
    )
    assert len(problems.items) == 2
    assert "not stored in MXFP4" in problems.items[0]
    assert "compute capability 8.0" in problems.items[1]


# --- the nvidia-smi reader -------------------------------------------------------------------

SMI_OUTPUT = "0, GPU-aaaa-1111, 9.0\n1, GPU-bbbb-2222, 8.0\n"


def _fake_smi(monkeypatch, stdout: str | None = SMI_OUTPUT, *, devices: bool = True) -> list:
    calls = []
    monkeypatch.setattr(quantization, "gpus_visible", lambda environ=None: devices)
    monkeypatch.setattr(
        quantization.shutil, "which", lambda name: None if stdout is None else "/bin/smi"
    )

    def run(cmd, **kwargs):
        calls.append(cmd)
        if stdout == "fail":
            raise subprocess.CalledProcessError(9, cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=stdout, stderr="")

    monkeypatch.setattr(quantization.subprocess, "run", run)
    return calls


def test_reader_parses_nvidia_smi_and_follows_cuda_visible_devices(monkeypatch):
    calls = _fake_smi(monkeypatch)
    assert gpu_compute_capabilities({}) == [(9, 0), (8, 0)]
    assert calls[0][0] == "nvidia-smi" and "--query-gpu=index,uuid,compute_cap" in calls[0]
    assert gpu_compute_capabilities({"CUDA_VISIBLE_DEVICES": "0"}) == [(9, 0)]
    assert gpu_compute_capabilities({"CUDA_VISIBLE_DEVICES": "1"}) == [(8, 0)]
    assert gpu_compute_capabilities({"CUDA_VISIBLE_DEVICES": "GPU-bbbb"}) == [(8, 0)]


def test_reader_without_a_gpu_or_without_nvidia_smi(monkeypatch):
    calls = _fake_smi(monkeypatch, devices=False)
    assert gpu_compute_capabilities({}) == []
    assert calls == []  # nothing is run when no GPU is visible
    _fake_smi(monkeypatch, stdout=None)
    assert gpu_compute_capabilities({}) is None  # a GPU device but no nvidia-smi: unknown
    _fake_smi(monkeypatch, stdout="fail")
    assert gpu_compute_capabilities({}) is None
    _fake_smi(monkeypatch, stdout="0, GPU-aaaa, [N/A]\n")
    assert gpu_compute_capabilities({}) is None


def test_reader_respects_hidden_gpus():
    # CUDA_VISIBLE_DEVICES="" hides every GPU: decided before nvidia-smi is looked for
    assert gpu_compute_capabilities({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert gpu_compute_capabilities({"CUDA_VISIBLE_DEVICES": "-1"}) == []
