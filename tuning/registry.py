"""One generic registry: name -> entry (a factory plus its typed arguments model), used by data
handlers, trackers and whatever plugs in next (callbacks, attention kernels, mixers, tools).

An entry is any object with `name` and `aliases`. The registry knows about older names (they
still work, with one deprecation notice), user entries given by import path
('package.module:function', turned into an entry by a registry-specific hook), built-in modules
imported on first use, and unknown names (an error listing what exists, with a did-you-mean).
It imports nothing heavy, so planning can resolve every name before anything loads.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from tuning.errors import ConfigError, did_you_mean

logger = logging.getLogger(__name__)


class Named(Protocol):
    name: str
    aliases: tuple[str, ...]


E = TypeVar("E", bound=Named)


def import_object(path: str, what: str) -> Any:
    """The object named 'package.module:attribute', or a ConfigError saying what is wrong."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} '{path}': an import path must look like 'package.module:name'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{what} '{path}': cannot import module '{module_name}' ({exc}). Check the name and "
            "that the module is on PYTHONPATH."
        ) from exc
    found = getattr(module, attr, None)
    if found is None:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(
            f"{what} '{path}': module '{module_name}' has no '{attr}'.{did_you_mean(attr, names)}"
        )
    return found


class Registry(Generic[E]):
    """Entries by name. `what` names the kind of entry in messages ("data handler")."""

    def __init__(
        self,
        what: str,
        *,
        builtins: tuple[str, ...] = (),
        from_import_path: Callable[[str, Any], E] | None = None,
    ) -> None:
        self.what = what
        self._builtins = builtins
        self._from_import_path = from_import_path
        self._entries: dict[str, E] = {}
        self._aliases: dict[str, str] = {}
        self._warned: set[str] = set()
        self._loaded = not builtins

    def add(self, entry: E, origin: str = "") -> None:
        """Register an entry; a name taken by another origin is an error, re-adding is a no-op."""
        taken = self._entries.get(entry.name) or self._entries.get(
            self._aliases.get(entry.name, "")
        )
        if taken is not None and getattr(taken, "origin", origin) != origin:
            raise ConfigError(
                f"{self.what} name '{entry.name}' is already taken by "
                f"{getattr(taken, 'origin', '?')}; register {origin} under another name."
            )
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._builtins:
                importlib.import_module(module)

    def entries(self) -> dict[str, E]:
        """Every registered entry by name, sorted."""
        self._load_builtins()
        return dict(sorted(self._entries.items()))

    def spellings(self) -> list[str]:
        """Every name that resolves (names and older aliases)."""
        self._load_builtins()
        return [*self._entries, *self._aliases]

    def doc_rows(self) -> list[tuple[str, str, str]]:
        """(name, older names, description) per entry, for the generated reference pages."""
        return [
            (name, ", ".join(entry.aliases), " ".join(str(getattr(entry, "doc", "")).split()))
            for name, entry in self.entries().items()
        ]

    def resolve(self, name: str) -> E:
        """The entry for a name, an older alias (with one notice) or an import path."""
        if ":" in name and self._from_import_path is not None:
            return self._from_import_path(name, import_object(name, self.what))
        self._load_builtins()
        if name in self._entries:
            return self._entries[name]
        if name in self._aliases:
            current = self._aliases[name]
            if name not in self._warned:
                self._warned.add(name)
                logger.warning(
                    "The %s name '%s' is deprecated; it now runs as '%s'. Rename it.",
                    self.what,
                    name,
                    current,
                )
            return self._entries[current]
        known = sorted(self._entries)
        own = "; or give your own as 'package.module:function'" if self._from_import_path else ""
        raise ConfigError(
            f"unknown {self.what} '{name}'.{did_you_mean(name, self.spellings())} Available: "
            f"{', '.join(known)}{own}."
        )
