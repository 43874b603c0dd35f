"""Registry of evaluation hooks: the extension point behind a case's `evaluate = ["..."]`.

An evaluation runs after the measured steps, on the same model and data source, and returns a
dict that the harness (enact_bench.run) stores under `metrics[<name>]` (e.g. `metrics["coco"] = {"map": ...}`):

    @register_evaluation("coco", modes=("infer",))
    def evaluate_coco(model, case, source, device) -> dict: ...

Modules that register hooks are imported lazily from BUILTIN_EVALUATION_MODULES.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from enact_bench.plugins import LazyRegistry

BUILTIN_EVALUATION_MODULES: list[str] = ["enact_bench.evaluate.coco_hook"]


@dataclass(frozen=True)
class EvaluationSpec:
    name: str
    fn: Callable[..., dict[str, Any]]
    modes: tuple[str, ...] = ("train", "infer")
    data: tuple[str, ...] | None = None  # data sources it works with (None: any)


_REGISTRY: LazyRegistry[EvaluationSpec] = LazyRegistry("evaluation", BUILTIN_EVALUATION_MODULES)


def register_evaluation(name: str, *, modes=("train", "infer"), data=None):
    def deco(fn):
        _REGISTRY.add(name, EvaluationSpec(name, fn, tuple(modes), tuple(data) if data else None))
        return fn
    return deco


def list_evaluations() -> list[str]:
    return _REGISTRY.names()


def get_evaluation(name: str) -> EvaluationSpec:
    return _REGISTRY.get(name)
