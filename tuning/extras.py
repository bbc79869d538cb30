"""Optional extras: is what a feature needs installed, and recent enough? Read from tuneforge's
own package metadata (the `[extra]` requirements in pyproject.toml), so the versions checked at
plan time are the ones `pip install 'tuneforge[extra]'` would install. Imports no extra.
"""

from __future__ import annotations

import importlib.metadata
from functools import cache

from packaging.requirements import Requirement

DIST = "tuneforge"


@cache
def extra_requirements(extra: str) -> tuple[Requirement, ...]:
    """The requirements of one extra ([] when tuneforge runs from a source tree, uninstalled)."""
    try:
        declared = importlib.metadata.requires(DIST) or []
    except importlib.metadata.PackageNotFoundError:
        return ()
    found = []
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker is not None and requirement.marker.evaluate({"extra": extra}):
            found.append(requirement)
    return tuple(found)


def extra_problem(extra: str, feature: str) -> str | None:
    """Why `feature` cannot run: a package of its extra missing or outside the pinned range."""
    for requirement in extra_requirements(extra):
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            return (
                f"{feature} needs the optional package '{requirement.name}', which is not "
                f"installed. Install it with: pip install 'tuneforge[{extra}]'"
            )
        if requirement.specifier and installed not in requirement.specifier:
            return (
                f"{feature} needs {requirement.name}{requirement.specifier}, but "
                f"{requirement.name} {installed} is installed. Install a matching one with: "
                f"pip install -U 'tuneforge[{extra}]'"
            )
    return None
