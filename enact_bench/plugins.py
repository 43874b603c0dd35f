"""A named registry of plug-ins whose built-in members live in modules imported on first lookup.

Data sources (enact_bench.data.sources) and evaluation hooks (enact_bench.evaluate.registry)
are both such registries: a module registers its members at import time, and lookups import the
built-in modules lazily, so `import enact_bench` stays light.
"""
from __future__ import annotations

import importlib
from typing import Generic, Iterable, TypeVar

Spec = TypeVar("Spec")


class LazyRegistry(Generic[Spec]):
    def __init__(self, kind: str, builtin_modules: Iterable[str]):
        self.kind = kind  # "data source", "evaluation": used in error messages
        self.builtin_modules = list(builtin_modules)
        self._specs: dict[str, Spec] = {}
        self._loaded = False

    def add(self, name: str, spec: Spec) -> None:
        self._specs[name] = spec

    def registered(self, name: str) -> Spec | None:
        """The member registered so far under `name`, without importing the built-ins."""
        return self._specs.get(name)

    def _load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self.builtin_modules:
            importlib.import_module(mod)

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._specs)

    def get(self, name: str) -> Spec:
        self._load_builtins()
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; expected one of {sorted(self._specs)}") from None
