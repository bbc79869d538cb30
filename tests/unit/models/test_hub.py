"""Hub ids resolve from the local hub cache when offline, checked at plan time without weights.

Why: air-gapped cluster jobs run with HF_HUB_OFFLINE=1 and the hub cache on a mounted volume;
`--model_name_or_path acme/tiny` used to be refused as "does not exist" although transformers
would load it from the cache.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tuning.models.hub import source_problem


def make_hub_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """The layout huggingface_hub writes: models--owner--name/{refs/main, snapshots/<rev>/...}."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    shutil.copytree(source, folder / "snapshots" / revision)
    return folder


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_cached_hub_id_plans_offline(offline, tmp_path, tiny_model_dir):
    make_hub_cache(tmp_path / "hub", "acme/tiny", tiny_model_dir)
    cache = str(tmp_path / "hub")
    assert source_problem("model_name_or_path", "acme/tiny", cache) is None
    assert source_problem("tokenizer_name_or_path", "acme/tiny", cache) is None


def test_an_uncached_hub_id_offline_names_the_cache_and_the_fix(offline, tmp_path):
    problem = source_problem("model_name_or_path", "acme/missing", str(tmp_path / "hub"))
    assert problem is not None
    assert f"not in the hub cache at {tmp_path / 'hub'}" in problem.replace(
        "neither a local folder nor ", "not "
    )
    assert "HF_HUB_OFFLINE=1 forbids downloading it" in problem
    assert "huggingface-cli download acme/missing" in problem


def test_online_a_hub_id_is_left_to_the_download(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert source_problem("model_name_or_path", "acme/anything", str(tmp_path)) is None


def test_a_path_that_does_not_exist_is_not_a_hub_id(offline, tmp_path):
    assert source_problem("model_name_or_path", str(tmp_path / "m"), None) == (
        f"--model_name_or_path {str(tmp_path / 'm')!r} does not exist."
    )
    assert "does not exist" in source_problem("model_name_or_path", "./rel/model", None)
