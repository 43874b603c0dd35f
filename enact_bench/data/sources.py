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

from enact_bench.data.batch import Batch  # noqa: F401 -- the batch type sources return
from enact_bench.plugins import LazyRegistry

# Modules imported on first lookup; each registers its sources at import time.
BUILTIN_SOURCE_MODULES: list[str] = ["enact_bench.data.synthetic", "enact_bench.data.coco_source"]


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
