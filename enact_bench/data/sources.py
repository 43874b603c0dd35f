"""Registry of data sources: the extension point behind a case's `data = "..."`.

A data source turns a Case into batches. Register one with

    @register_data_source("synthetic", options={"max_objects": "int, most objects per image"})
    def make_synthetic(case) -> DataSource: ...

where `options` lists the keys a suite may put in the case's `data_options` table (anything else
is an error naming the file). Modules that register sources are imported lazily from
BUILTIN_SOURCE_MODULES, so adding a source is: write the module, add its name there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from enact_bench.plugins import LazyRegistry

# Modules imported on first lookup; each registers its sources at import time.
BUILTIN_SOURCE_MODULES: list[str] = ["enact_bench.data.synthetic", "enact_bench.data.coco_source"]


@dataclass
class Batch:
    """One batch on the host (the harness moves it to the device outside the timed region).

    images: list of normalised (3, H_i, W_i) float tensors; targets: DETR-style dicts
    (`labels` int64 (n,), `boxes` float (n, 4) normalised cxcywh); sizes: (B, 2) int64 of (h, w),
    the frame in which post-processing returns absolute boxes.
    """

    images: list
    targets: list
    sizes: Any
    image_ids: list | None = None

    def to(self, device) -> "Batch":
        return Batch(
            images=[im.to(device, non_blocking=True) for im in self.images],
            targets=[{k: (v.to(device) if hasattr(v, "to") else v) for k, v in t.items()}
                     for t in self.targets],
            sizes=self.sizes.to(device),
            image_ids=self.image_ids,
        )


class DataSource(Protocol):
    def batch(self, index: int) -> Batch:  # same index, same batch
        ...


@dataclass(frozen=True)
class DataSourceSpec:
    name: str
    factory: Callable[[Any], DataSource]
    options: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


_REGISTRY: LazyRegistry[DataSourceSpec] = LazyRegistry("data source", BUILTIN_SOURCE_MODULES)


def register_data_source(name: str, *, options: Mapping[str, str] | None = None,
                         description: str = ""):
    def deco(factory):
        earlier = _REGISTRY.registered(name)
        if earlier is not None and earlier.factory is not factory:
            raise RuntimeError(f"data source {name!r} registered twice")
        _REGISTRY.add(name, DataSourceSpec(name, factory, dict(options or {}), description))
        return factory
    return deco


def list_data_sources() -> list[str]:
    return _REGISTRY.names()


def get_data_source(name: str) -> DataSourceSpec:
    return _REGISTRY.get(name)


def make_data_source(case) -> DataSource:
    return get_data_source(case.data).factory(case)
