"""Registry of detector factories: create_detector(name, ...), list_detectors(), register_detector.

A family module registers each named configuration:

    @register_detector("detr_r50", family="detr", overrides=DetrConfig)
    def detr_r50(enact_config, num_classes, pretrained_backbone, **overrides) -> Detector: ...

`overrides` names what callers may change: a dataclass type (its field names), an iterable of
names, or None (then the factory's keyword parameters after the first three are the names).
`create_detector` checks names and overrides before calling the factory, and turns `enact`
(False, True = EnactConfig.reference(), or an EnactConfig) into `enact_config`.
Tiny configurations (`tiny=True`) are small enough for CPU tests; tests parametrise over
`list_detectors(tiny=True)`.

Names of models we did not write (`hf:detr`, `hf:PATH`, `py:pkg.mod:build`, `my_model.py:build`;
detectors/sources.py) work in `get_spec` and `create_detector` too, without registration.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .base import Detector

# family modules imported on first use so that their @register_detector calls run
FAMILY_MODULES = ("enact_bench.detectors.detr", "enact_bench.detectors.conditional_detr",
                  "enact_bench.detectors.anchor_detr", "enact_bench.detectors.deformable_detr",
                  "enact_bench.detectors.dino")


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    family: str
    tiny: bool
    factory: Callable[..., Detector]
    overrides: tuple[str, ...]
    description: str = ""
    # a source model's own check of a case's overrides (raises UserInputError); None: `overrides` lists them
    check_overrides: Callable[[dict], None] | None = None


_REGISTRY: dict[str, DetectorSpec] = {}


def _override_names(factory: Callable, overrides: Any) -> tuple[str, ...]:
    if overrides is None:
        params = list(inspect.signature(factory).parameters.values())[3:]
        return tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    if dataclasses.is_dataclass(overrides):
        return tuple(f.name for f in dataclasses.fields(overrides))
    return tuple(overrides)


def register_detector(name: str, *, family: str, tiny: bool = False, overrides: Any = None,
                      description: str = "") -> Callable:
    def wrap(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"detector {name!r} is already registered (family {_REGISTRY[name].family!r})")
        doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
        _REGISTRY[name] = DetectorSpec(name, family, tiny, factory, _override_names(factory, overrides), doc)
        return factory

    return wrap


def _load_families() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(module)


def list_detectors(tiny: bool | None = None, family: str | None = None) -> list[str]:
    """Registered names, sorted; `tiny`/`family` filter them."""
    _load_families()
    return sorted(n for n, s in _REGISTRY.items()
                  if (tiny is None or s.tiny == tiny) and (family is None or s.family == family))


def get_spec(name: str) -> DetectorSpec:
    from .sources import check_source_overrides, family_of, is_source_name, source_description

    if is_source_name(name):  # a model source (detectors/sources.py): its own family and override check
        family = family_of(name)
        return DetectorSpec(name, family, False, lambda *a, **kw: create_detector(name, **kw), (),
                            source_description(name, family),
                            check_overrides=lambda overrides: check_source_overrides(name, overrides))
    _load_families()
    if name not in _REGISTRY:
        raise KeyError(f"unknown detector {name!r}; registered detectors: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def resolve_enact(enact: Any):
    """False/None -> None, True -> EnactConfig.reference(), EnactConfig -> itself."""
    if enact is None or enact is False:
        return None
    from enact import EnactConfig  # imported here: baseline detectors work without the plug-in

    if enact is True:
        return EnactConfig.reference()
    if isinstance(enact, EnactConfig):
        return enact
    raise TypeError(f"enact must be False, True (the reference preset) or an enact.EnactConfig; got {enact!r}")


def create_detector(name: str, *, enact: Any = False, num_classes: int | None = None,
                    pretrained_backbone: bool = False, **overrides: Any) -> Detector:
    """Build a registered detector (num_classes None: 91, COCO's ids), or a source model
    (detectors/sources.py; num_classes None: its config's). Unknown names or overrides raise errors
    listing the valid ones."""
    from .sources import create_source_detector, is_source_name

    if is_source_name(name):
        if pretrained_backbone:
            raise ValueError(f"{name}: pretrained_backbone applies to the registered detectors; a source model's "
                             f"weights come from --checkpoint")
        return create_source_detector(name, enact_config=resolve_enact(enact), num_classes=num_classes,
                                      overrides=overrides)
    if num_classes is None:
        num_classes = 91
    spec = get_spec(name)
    unknown = sorted(set(overrides) - set(spec.overrides))
    if unknown:
        raise TypeError(f"unknown override(s) {unknown} for detector {name!r}; valid overrides: "
                        f"{', '.join(spec.overrides)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (max class id + 1, 91 for COCO); got {num_classes!r}")
    model = spec.factory(resolve_enact(enact), num_classes, bool(pretrained_backbone), **overrides)
    model.name = name
    model.family = spec.family
    return model


def build_variant(name: str, *, enact: bool = False, enact_config: dict | None = None,
                  cluster_size: int | None = None, num_classes: int | None = None,
                  overrides: dict | None = None) -> Detector:
    """A detector variant from the options cases, plans and validation describe it by: `enact`
    with an optional `enact_config` (EnactConfig's fields), or `cluster_size` (ENACT at that
    fixed L, what a fake step needs), plus the detector's overrides (e.g. attention="sdpa")."""
    config: Any = bool(enact)
    if cluster_size is not None or (enact and enact_config):
        from enact import EnactConfig
        config = EnactConfig(**(enact_config or {}), **({"cluster_size": cluster_size} if cluster_size else {}))
    return create_detector(name, enact=config, num_classes=num_classes, **(overrides or {}))


def describe(names: Iterable[str] | None = None) -> list[DetectorSpec]:
    return [get_spec(n) for n in (names or list_detectors())]


def preset_factory(model_cls, base):
    """The registry factory of one preset: `base` (a frozen config) with the user's overrides,
    built as `model_cls(config, num_classes, enact_config, pretrained_backbone)`."""
    def factory(enact_config, num_classes, pretrained_backbone, **overrides):
        if overrides.get("enact_layers") is not None:
            overrides["enact_layers"] = tuple(overrides["enact_layers"])
        return model_cls(dataclasses.replace(base, **overrides), num_classes, enact_config, pretrained_backbone)

    return factory
