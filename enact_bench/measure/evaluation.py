"""Registry of evaluation hooks: the extension point behind a case's `evaluate = ["..."]`.

An evaluation runs after the measured steps, on the same model and data source, and returns a
dict that the runner stores under `metrics[<name>]` (e.g. `metrics["coco"] = {"map": ...}`):

    @register_evaluation("coco", modes=("infer",))
    def evaluate_coco(model, case, source, device) -> dict: ...

Modules that register hooks are imported lazily from BUILTIN_EVALUATION_MODULES.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

BUILTIN_EVALUATION_MODULES: list[str] = ["enact_bench.data.coco_source"]


@dataclass(frozen=True)
class EvaluationSpec:
    name: str
    fn: Callable[..., dict[str, Any]]
    modes: tuple[str, ...] = ("train", "infer")
    data: tuple[str, ...] | None = None  # data sources it works with (None: any)


_REGISTRY: dict[str, EvaluationSpec] = {}
_loaded = False


def register_evaluation(name: str, *, modes=("train", "infer"), data=None):
    def deco(fn):
        _REGISTRY[name] = EvaluationSpec(name, fn, tuple(modes), tuple(data) if data else None)
        return fn
    return deco


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_EVALUATION_MODULES:
        importlib.import_module(mod)


def list_evaluations() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_evaluation(name: str) -> EvaluationSpec:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown evaluation {name!r}; expected one of {sorted(_REGISTRY)}") from None
