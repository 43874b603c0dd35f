"""Model sources: detector names for models we did not write, accepted wherever a registered name is.

    hf:MODEL_TYPE              transformers' *ForObjectDetection for that model type (detectors/hf.py)
    hf:PATH                    a folder (or its config.json) written by save_pretrained
    py:PKG.MODULE:FACTORY      a factory function in an importable module (detectors/factory.py)
    PATH/TO/FILE.py:FACTORY    a factory function in a Python file

`create_source_detector` builds a ForeignDetector (detectors/foreign.py) from any of them, with
ENACT patched into the encoder's dense self-attention when asked (enact.patch and its adapters);
`family_of` and `check_source_overrides` give the registry's DetectorSpec of the name;
`source_variants` says which plan variants apply (original, eager, fused, enact, enact+fused).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enact_bench.errors import UserInputError

KINDS = ("hf_type", "hf_path", "module", "file")
SYNTAX = "hf:MODEL_TYPE, hf:PATH, py:PKG.MODULE:FACTORY or PATH/TO/FILE.py:FACTORY"
# the plan's variants of a source model; a factory model has no attention switch of ours
SOURCE_VARIANTS = ("original", "eager", "fused", "enact", "enact+fused")
DEFAULT_SOURCE_VARIANTS = ("original", "eager", "enact")


class EnactNotApplicable(UserInputError):
    """ENACT was asked for a model whose encoder has no self-attention it adapts."""


@dataclass(frozen=True)
class SourceName:
    kind: str  # one of KINDS
    text: str  # the name as given
    target: str  # model type, path, module or file
    attr: str | None = None  # the factory's name

    @property
    def is_hf(self) -> bool:
        return self.kind in ("hf_type", "hf_path")


def parse_source(name: str) -> SourceName | None:
    """The source a name means, or None for a registered detector's name. A name that starts like a
    source but is malformed is a one-line error."""
    if not isinstance(name, str):
        return None
    if name.startswith("hf:"):
        rest = name[3:].strip()
        if not rest:
            raise UserInputError(f"{name!r}: expected hf:MODEL_TYPE (e.g. hf:detr) or hf:PATH")
        looks_like_path = ("/" in rest or os.sep in rest or rest.endswith(".json") or rest.startswith(".")
                           or Path(rest).expanduser().exists())
        return SourceName("hf_path" if looks_like_path else "hf_type", name, rest)
    if name.startswith("py:"):
        module, _, attr = name[3:].rpartition(":")
        if not module or not attr or not all(p.isidentifier() for p in module.split(".")) or not attr.isidentifier():
            raise UserInputError(f"{name!r}: expected py:PKG.MODULE:FACTORY (e.g. py:mypkg.models:build)")
        return SourceName("module", name, module, attr)
    path, sep, attr = name.rpartition(":")
    if sep and path.endswith(".py"):
        if not attr.isidentifier():
            raise UserInputError(f"{name!r}: expected PATH/TO/FILE.py:FACTORY (the factory's name after the colon)")
        return SourceName("file", name, path, attr)
    return None


def is_source_name(name: str) -> bool:
    try:
        return parse_source(name) is not None
    except UserInputError:
        return True  # malformed, but a source name: the error comes when it is used


def encoder_self_attention(name: str, module) -> bool:
    """Where ENACT goes by default: modules named `...encoder...self_attn` (HF's DETR family; RT-DETR's
    AIFI layers sit under `model.encoder.aifi`)."""
    return ".encoder." in f".{name}." and name.endswith("self_attn")


def _hf_config(src: SourceName, overrides: dict, num_classes: int | None):
    from . import hf

    return hf.build_config("type" if src.kind == "hf_type" else "path", src.target, src.text, overrides, num_classes)


def family_of(name: str) -> str:
    src = parse_source(name)
    if src.is_hf:
        _, model_type = _hf_config(src, {}, None)
        return f"hf:{model_type}"
    return "factory"


def check_source_overrides(name: str, overrides: dict) -> None:
    """Overrides the source does not take are errors now (hf: config fields checked against the config,
    without building the model; a factory: its parameters, without calling it)."""
    src = parse_source(name)
    if src.is_hf:
        _hf_config(src, overrides, None)
        return
    from .factory import factory_parameters, find_factory

    accepted = factory_parameters(find_factory(src.kind, src.target, src.attr, name))
    unknown = sorted(set(overrides) - set(accepted)) if accepted is not None else []
    if unknown:
        raise UserInputError(f"{name}: the factory takes no {', '.join(map(repr, unknown))}; its parameters: "
                             f"{', '.join(accepted) or '(none)'}")


def check_source(name: str) -> None:
    """The name resolves (transformers installed, the model type or config exists, the factory is
    found), without building anything."""
    check_source_overrides(name, {})


def check_source_build(name: str, overrides: dict) -> None:
    """Everything `create_source_detector` would refuse, now (before a long plan): the overrides,
    and for a factory its call, on the meta device (nothing allocated)."""
    import torch

    check_source_overrides(name, overrides)
    if parse_source(name).is_hf:
        return
    with torch.device("meta"):
        create_source_detector(name, overrides=overrides)


def source_description(name: str, family: str) -> str:
    """The line `list` and the registry's DetectorSpec give a source model."""
    return f"{'transformers' if family.startswith('hf:') else 'factory'} model {name}"


def create_source_detector(name: str, *, enact_config=None, num_classes: int | None = None,
                           overrides: dict | None = None):
    """Build the ForeignDetector of a source name; ENACT (an EnactConfig) patched into its encoder's
    self-attention. Raises UserInputError (one line) for anything the user can fix, and
    EnactNotApplicable where the model has no self-attention ENACT adapts."""
    from .foreign import ForeignDetector
    from .model_spec import ModelSpec

    src = parse_source(name)
    overrides = dict(overrides or {})
    where = encoder_self_attention
    skip = None
    if src.is_hf:
        from . import hf

        config, model_type = _hf_config(src, overrides, num_classes)
        attn = hf.split_overrides(overrides)[1].get("attn_implementation")
        if attn == "sdpa" and not hf.supports_sdpa(model_type):
            raise UserInputError(f"{name}: transformers has no SDPA attention for {model_type}")
        info = hf.source_fields(config, model_type)
        module = hf.build_model(config, attn)
        spec = ModelSpec(model=module, size_multiple=info["size_multiple"])
        family, notes, skip = info["family"], info["notes"], info["enact_skip"]
        attention = module.config._attn_implementation
        classes = config.num_labels
    else:
        from .factory import call_factory, find_factory

        spec = call_factory(find_factory(src.kind, src.target, src.attr, name), overrides, name)
        if spec.make_batch is None:
            _check_hf_convention(spec.model, name)
        family, notes, attention = "factory", (), "own"
        classes = num_classes if num_classes is not None else 2
        where = spec.enact_where or where
    if enact_config is not None:
        _patch_enact(spec.model, name, where, enact_config, skip)
    return ForeignDetector(spec, name=name, family=family, attention=attention, num_classes=classes,
                           enact_config=enact_config, notes=notes)


def _check_hf_convention(model, name: str) -> None:
    import inspect

    params = inspect.signature(model.forward).parameters.values()
    if not any(p.name == "pixel_values" or p.kind == p.VAR_KEYWORD for p in params):
        raise UserInputError(f"{name}: {type(model).__name__}.forward takes no pixel_values: follow HF's convention "
                             f"(forward(pixel_values, pixel_mask=None, labels=None)) or return a ModelSpec with "
                             f"make_batch")


def _patch_enact(model, name: str, where, config, skip: str | None) -> list[str]:
    import enact

    if skip:
        raise EnactNotApplicable(f"{name}: ENACT does not apply: {skip}")
    try:
        return enact.patch(model, where=where, config=config)
    except (TypeError, ValueError) as e:
        raise EnactNotApplicable(f"{name}: ENACT does not apply: {str(e).splitlines()[0]}") from None


def source_facts(name: str) -> tuple[tuple[str, ...], int]:
    """(notes, size multiple) of a source model without building it: HF's quirks and the side
    multiple its model type needs (detectors/hf.py); a factory's are known once it is built (its
    ModelSpec): (), 1 here."""
    src = parse_source(name)
    if not src.is_hf:
        return (), 1
    from . import hf

    _, model_type = _hf_config(src, {}, None)
    return ((hf.NOTES[model_type],) if model_type in hf.NOTES else ()), hf.SIZE_MULTIPLE.get(model_type, 1)


@dataclass(frozen=True)
class SourceVariant:
    variant: str
    applicable: bool
    reason: str
    overrides: dict
    enact: bool


def source_variants(name: str, variants: tuple[str, ...]) -> list[SourceVariant]:
    """Which plan variants apply to a source model, with the overrides each one adds."""
    src = parse_source(name)
    out = []
    skip, sdpa, model_type = None, False, None
    if src.is_hf:
        from . import hf

        _, model_type = _hf_config(src, {}, None)
        skip, sdpa = hf.ENACT_SKIP.get(model_type), hf.supports_sdpa(model_type)
    for v in variants:
        if v not in SOURCE_VARIANTS:
            raise UserInputError(f"variant {v!r}: expected one of {', '.join(SOURCE_VARIANTS)}")
        enact = v.startswith("enact")
        attn: Any = {"eager": "eager", "fused": "sdpa", "enact+fused": "sdpa"}.get(v)
        if attn is not None and not src.is_hf:
            out.append(SourceVariant(v, False, "a factory model has no attention switch of enact-bench's", {}, enact))
            continue
        if attn == "sdpa" and not sdpa:
            out.append(SourceVariant(v, False, f"transformers has no SDPA attention for {model_type}", {}, enact))
            continue
        if enact and skip:
            out.append(SourceVariant(v, False, f"ENACT does not apply: {skip}", {}, enact))
            continue
        reason = {"original": "as configured (the model's default attention)",
                  "eager": "attn_implementation = eager (attention weights materialised)",
                  "fused": "attn_implementation = sdpa (fused attention)",
                  "enact": "ENACT in the encoder's self-attention, the rest as configured",
                  "enact+fused": "ENACT in the encoder's self-attention, SDPA elsewhere"}[v]
        out.append(SourceVariant(v, True, reason, {"attn_implementation": attn} if attn else {}, enact))
    return out
