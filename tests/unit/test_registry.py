"""The generic registry: names, older aliases with one notice, import paths, clear unknowns."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from tuning.errors import ConfigError
from tuning.registry import Registry, import_object


@dataclass(frozen=True)
class Entry:
    name: str
    aliases: tuple[str, ...] = ()
    origin: str = "here"


def _registry() -> Registry[Entry]:
    registry: Registry[Entry] = Registry(
        "widget", from_import_path=lambda path, obj: Entry(path, origin=str(obj))
    )
    registry.add(Entry("spanner", aliases=("wrench",)), "here")
    registry.add(Entry("hammer"), "here")
    return registry


def test_names_aliases_and_import_paths_resolve():
    registry = _registry()
    assert registry.resolve("spanner").name == "spanner"
    assert registry.resolve("os.path:join").origin.startswith("<function join")
    assert list(registry.entries()) == ["hammer", "spanner"]
    assert sorted(registry.spellings()) == ["hammer", "spanner", "wrench"]


def test_an_older_alias_works_with_one_notice(caplog):
    registry = _registry()
    with caplog.at_level(logging.WARNING, logger="tuning.registry"):
        assert registry.resolve("wrench").name == "spanner"
        assert registry.resolve("wrench").name == "spanner"
    assert len([r for r in caplog.records if "deprecated" in r.getMessage()]) == 1


def test_unknown_names_list_what_exists_with_a_did_you_mean():
    with pytest.raises(ConfigError, match=r"unknown widget 'spaner'\. Did you mean 'spanner'\?"):
        _registry().resolve("spaner")
    with pytest.raises(ConfigError, match="Available: hammer, spanner; or give your own"):
        _registry().resolve("saw")


def test_a_taken_name_is_refused_and_readding_is_harmless():
    registry = _registry()
    registry.add(Entry("hammer"), "here")
    with pytest.raises(ConfigError, match="'hammer' is already taken by here"):
        registry.add(Entry("hammer", origin="elsewhere"), "elsewhere")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_colon", "must look like 'package.module:name'"),
        ("no_such_module_q:f", "cannot import module 'no_such_module_q'"),
        ("os.path:joinn", r"has no 'joinn'\. Did you mean 'join'\?"),
    ],
)
def test_bad_import_paths(path, message):
    with pytest.raises(ConfigError, match=message):
        import_object(path, "widget")
