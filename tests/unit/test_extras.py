"""Every optional extra, hidden in turn, stops the plan with the exact pip install; too old
versions too. Why: a missing package used to surface as an ImportError traceback at load."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import tomllib

from tuning.extras import extra_problem, extra_requirements

REPO = Path(__file__).resolve().parents[2]
EXTRAS = [
    name
    for name in tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    if name != "dev"
]


def _hide(monkeypatch, distribution: str, version: str | None = None) -> None:
    real = importlib.metadata.version

    def fake(name: str) -> str:
        if name == distribution:
            if version is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return version
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", fake)


def test_every_extra_is_known_to_the_installed_metadata():
    assert len(EXTRAS) >= 10
    assert all(extra_requirements(extra) for extra in EXTRAS)


@pytest.mark.parametrize("extra", EXTRAS)
def test_a_hidden_extra_names_the_pip_install(monkeypatch, extra):
    requirement = extra_requirements(extra)[0]
    _hide(monkeypatch, requirement.name)
    problem = extra_problem(extra, f"feature needing {extra}")
    assert problem == (
        f"feature needing {extra} needs the optional package '{requirement.name}', which is not "
        f"installed. Install it with: pip install 'tuneforge[{extra}]'"
    )


def test_a_too_old_package_is_named_with_the_range(monkeypatch):
    _hide(monkeypatch, "kernels", "0.12.0")
    assert extra_problem("kernels", "--flash_attn_implementation fa3") == (
        "--flash_attn_implementation fa3 needs kernels<0.19,>=0.18.2, but kernels 0.12.0 is "
        "installed. Install a matching one with: pip install -U 'tuneforge[kernels]'"
    )
    _hide(monkeypatch, "kernels", "0.18.3")
    assert extra_problem("kernels", "x") is None


def test_the_kernels_extra_pins_what_transformers_needs():
    from packaging.specifiers import SpecifierSet

    from tuning.models.attention import _transformers_pin

    (ours,) = extra_requirements("kernels")
    wanted = _transformers_pin("kernels")
    assert wanted is not None
    assert ours.specifier == SpecifierSet(wanted.removeprefix("kernels"))
