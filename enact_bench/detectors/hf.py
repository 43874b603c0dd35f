"""`hf:MODEL_TYPE` and `hf:PATH`: HuggingFace transformers' object-detection models, built offline.

`hf:detr` is `AutoModelForObjectDetection.from_config(AutoConfig.for_model("detr", ...))`: the
config's defaults, random weights, nothing downloaded (HF_HUB_OFFLINE is set before transformers
is imported; timm backbones are built with `use_pretrained_backbone=False`). `hf:PATH` reads a
folder written by `save_pretrained` (or its config.json); its weights load only when
`--checkpoint` names them. transformers is an optional extra: `pip install 'enact-bench[hf]'`.

Overrides (a suite's `overrides` table, `plan --set`):
- `config.FIELD = VALUE`: a field of the config (`config.num_queries = 300`), or of a sub-config
  (`config.backbone_config.depths = [2, 2, 2, 2]`); a field the config lacks is an error.
- `attn_implementation`: "eager" | "sdpa" (HF's own switch; unset: the model's default).
- `tiny = true`: a small configuration for CPU tests (TINY below: one or two layers, width 32,
  a small backbone), still the model type's own classes.

The model is trained as HF trains it; its quirks are kept and named (NOTES), not "fixed".
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from enact_bench.errors import UserInputError

INSTALL_HINT = "pip install 'enact-bench[hf]'"
TESTED_RANGE = "transformers>=5,<6"

# timm's smallest ResNet (test_resnet, 0.37 M parameters), without weights, as DETR-style configs take it.
_TIMM_TINY = {"model_type": "timm_backbone", "backbone": "test_resnet", "features_only": True,
           "use_pretrained_backbone": False, "out_indices": [1, 2, 3, 4], "num_channels": 3}
_DETR_LIKE = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
              "encoder_attention_heads": 2, "decoder_attention_heads": 2, "num_queries": 10}
_RT_DETR_LIKE = {"encoder_hidden_dim": 32, "d_model": 32, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
                 "decoder_layers": 2, "encoder_attention_heads": 2, "decoder_attention_heads": 2, "num_queries": 10,
                 "num_denoising": 10, "decoder_in_channels": [32, 32, 32], "encoder_in_channels": [32, 64, 128],
                 "backbone_config": {"model_type": "rt_detr_resnet", "hidden_sizes": [16, 32, 64, 128],
                                     "depths": [1, 1, 1, 1], "embedding_size": 16, "layer_type": "basic",
                                     "out_features": ["stage2", "stage3", "stage4"]}}
# D-FINE / DEIMv2: a small HGNetV2 (its hidden_sizes are the stages' output channels)
_HGNET_TINY = {"model_type": "hgnet_v2", "embedding_size": 16, "depths": [1, 1, 1, 1],
               "hidden_sizes": [32, 64, 96, 128], "stem_channels": [3, 8, 16], "stage_in_channels": [16, 32, 64, 96],
               "stage_mid_channels": [8, 16, 24, 32], "stage_out_channels": [32, 64, 96, 128],
               "stage_num_blocks": [1, 1, 1, 1], "stage_numb_of_layers": [2, 2, 2, 2],
               "out_features": ["stage2", "stage3", "stage4"]}
_D_FINE_LIKE = {**_RT_DETR_LIKE, "encoder_in_channels": [64, 96, 128], "backbone_config": _HGNET_TINY, "head_dim": 16}
# `tiny = true`: config overrides per model type (CPU tests; one real step in about a second)
TINY: dict[str, dict] = {
    "detr": {**_DETR_LIKE, "backbone_config": _TIMM_TINY},
    "conditional_detr": {**_DETR_LIKE, "backbone_config": _TIMM_TINY},
    "table-transformer": {**_DETR_LIKE, "backbone_config": _TIMM_TINY},
    "dab-detr": {**{k: v for k, v in _DETR_LIKE.items() if k != "d_model"}, "hidden_size": 32,
                 "backbone_config": _TIMM_TINY},
    "deformable_detr": {**_DETR_LIKE, "encoder_n_points": 2, "decoder_n_points": 2,
                        "backbone_config": {**_TIMM_TINY, "out_indices": [2, 3, 4]}},
    "yolos": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "num_detection_tokens": 10, "image_size": [64, 96]},
    "rt_detr": _RT_DETR_LIKE,
    "rt_detr_v2": _RT_DETR_LIKE,
    "d_fine": _D_FINE_LIKE,
    "deimv2": _D_FINE_LIKE,
    # LW-DETR / RF-DETR: a two-block windowed ViT (DINOv2 for RF-DETR), one projector level (the
    # defaults have none for LW-DETR), two query groups instead of 13
    "lw_detr": {"backbone_config": {"model_type": "lw_detr_vit", "hidden_size": 32, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "mlp_ratio": 2, "image_size": 128,
                                    "pretrain_image_size": 64, "window_block_indices": [0], "num_windows": 4,
                                    "num_windows_side": 2, "out_features": ["stage1", "stage2"], "out_indices": [1, 2]},
                "d_model": 32, "decoder_ffn_dim": 64, "decoder_layers": 2, "decoder_self_attention_heads": 2,
                "decoder_cross_attention_heads": 2, "num_queries": 10, "group_detr": 2, "decoder_n_points": 2,
                "projector_scale_factors": [1.0]},
    "rf_detr": {"backbone_config": {"model_type": "rf_detr_dinov2", "hidden_size": 32, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "mlp_ratio": 2, "image_size": 112, "num_windows": 2,
                                    "window_block_indexes": [0], "out_features": ["stage1", "stage2"],
                                    "out_indices": [1, 2]},
                "d_model": 32, "decoder_ffn_dim": 64, "decoder_layers": 2, "decoder_self_attention_heads": 2,
                "decoder_cross_attention_heads": 2, "num_queries": 10, "group_detr": 2, "decoder_n_points": 2,
                "num_feature_levels": 1, "intermediate_size": 64},
}

# Model types whose inputs include text: refused (enact-bench feeds images and boxes only).
TEXT_INPUT_NOTE = "needs text inputs (a zero-shot detector); enact-bench trains image-only detectors"

# Image sides the model needs to be a multiple of (its strides / patch grids); a requested size
# is rounded up to it, and the plan says so.
SIZE_MULTIPLE = {"rt_detr": 32, "rt_detr_v2": 32, "d_fine": 32, "deimv2": 32, "lw_detr": 64, "rf_detr": 56,
                 "yolos": 16}

# Why ENACT does not apply, for model types whose encoder has no dense self-attention it adapts.
ENACT_SKIP = {
    "deformable_detr": "the encoder's self-attention is multi-scale deformable attention (its cost grows with "
                       "the queries, not the keys, so pooling keys saves nothing)",
    "yolos": "YOLOS is a ViT whose detection tokens attend together with the patches; there is no separate "
             "encoder self-attention over image features to pool",
    "lw_detr": "LW-DETR has no transformer encoder (a windowed ViT backbone, a deformable decoder)",
    "rf_detr": "RF-DETR has no transformer encoder (a windowed DINOv2 backbone, a deformable decoder)",
}

# HF's own training behaviour, planned as it is and said in the plan's rows and the docs.
NOTES = {
    "detr": "HF's ResNet backbone path (use_timm_backbone=false) freezes every backbone parameter: its rule "
            "looks for 'stage.1' in names spelled 'stages.1'; the timm path (the default) freezes none. The "
            "release freezes the stem and layer1",
    "conditional_detr": "the first decoder layer's query_scale MLP gets no gradient (HF skips it in layer 0), "
                        "so AdamW keeps no state for it",
    "dab-detr": "the first decoder layer's query_scale MLP gets no gradient (HF skips it in layer 0); HF's "
                "DAB-DETR attention has no SDPA path",
    "table-transformer": "HF's Table Transformer attention has no SDPA path",
}


def _transformers():
    """transformers, imported offline; a missing install is a one-line user error."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
    try:
        import transformers
    except ImportError:
        raise UserInputError(f"hf: models need HuggingFace transformers ({TESTED_RANGE}): {INSTALL_HINT}") from None
    transformers.logging.set_verbosity_error()
    return transformers


def _mappings():
    from transformers.models.auto.modeling_auto import (MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES,
                                                        MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES)
    return MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES, MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES


def model_types() -> list[str]:
    """Model types `hf:TYPE` builds: those with an AutoModelForObjectDetection class."""
    _transformers()
    detection, _ = _mappings()
    return sorted(detection)


def canonical_type(text: str) -> str:
    """The installed transformers' spelling of a model type (`table_transformer` -> `table-transformer`);
    an unknown or text-input type is a one-line error listing the supported ones."""
    _transformers()
    detection, zero_shot = _mappings()
    for spelling in (text, text.replace("_", "-"), text.replace("-", "_")):
        if spelling in detection:
            return spelling
        if spelling in zero_shot:
            raise UserInputError(f"hf:{text}: {TEXT_INPUT_NOTE}")
    raise UserInputError(f"hf:{text}: unknown model type; transformers {_version()} builds these object "
                         f"detectors: {', '.join(sorted(detection))} (or give hf:PATH to a saved config)")


def _version() -> str:
    return _transformers().__version__


def config_path(text: str) -> Path:
    """The config.json of `hf:PATH` (a folder holding one, or the file itself)."""
    p = Path(text).expanduser()
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise UserInputError(f"hf:{text}: no config found (expected a folder written by save_pretrained, with a "
                             f"config.json, or the config.json itself)")
    return p


def split_overrides(overrides: dict) -> tuple[dict, dict]:
    """(config field -> value, other overrides). `config.a.b = v` -> {"a": {"b": v}}; a nested
    table `config = {a = 1}` is read the same way."""
    fields: dict = {}
    rest: dict = {}
    for key, value in overrides.items():
        if key == "config" and isinstance(value, dict):
            for k, v in value.items():
                _put(fields, k.split("."), v)
        elif key.startswith("config."):
            _put(fields, key.split(".")[1:], value)
        else:
            rest[key] = value
    return fields, rest


def _put(d: dict, path: list[str], value) -> None:
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value


OTHER_OVERRIDES = {"attn_implementation": ("eager", "sdpa"), "tiny": (True, False)}


def check_other_overrides(rest: dict, name: str) -> None:
    for key, value in rest.items():
        if key not in OTHER_OVERRIDES:
            raise UserInputError(f"{name}: unknown override {key!r}; valid: config.FIELD (a field of the model's "
                                 f"config), {', '.join(OTHER_OVERRIDES)}")
        if value not in OTHER_OVERRIDES[key] and value is not None:
            raise UserInputError(f"{name}: {key} = {value!r}: expected one of {OTHER_OVERRIDES[key]}")


def _replaces(sub, value) -> bool:
    """A sub-config table that names another model_type replaces the sub-config whole."""
    return sub is None or not hasattr(sub, "to_dict") or value.get("model_type", sub.model_type) != sub.model_type


def _check_fields(config, fields: dict, where: str, prefix: str = "config.") -> None:
    """Every overridden field must exist in the (default) config: a typo is an error, not a new attribute."""
    for key, value in fields.items():
        if not hasattr(config, key):
            raise UserInputError(f"{where}: {prefix}{key}: {type(config).__name__} has no field {key!r}")
        if isinstance(value, dict):
            sub = getattr(config, key)
            if _replaces(sub, value):
                if "model_type" not in value:
                    raise UserInputError(f"{where}: {prefix}{key}: a table for a sub-config that is not set "
                                         f"needs its model_type")
                continue
            _check_fields(sub, value, where, f"{prefix}{key}.")


def _merge(config, fields: dict) -> dict:
    """Constructor kwargs: top-level values as given, sub-configs as their dict updated (or
    replaced, when the table names another model_type)."""
    kw = {}
    for key, value in fields.items():
        if isinstance(value, dict):
            sub = getattr(config, key)
            if _replaces(sub, value):
                kw[key] = dict(value)
                continue
            merged = sub.to_dict()
            merged.update(_merge(sub, value))
            kw[key] = merged
        else:
            kw[key] = value
    return kw


def build_config(kind: str, target: str, name: str, overrides: dict, num_classes: int | None):
    """The config of `hf:TYPE` (kind "type") or `hf:PATH` (kind "path") with the overrides applied;
    no backbone weights. Returns (config, model_type)."""
    t = _transformers()
    fields, rest = split_overrides(overrides)
    check_other_overrides(rest, name)
    if kind == "type":
        model_type = canonical_type(target)
        default = t.AutoConfig.for_model(model_type)
        if rest.get("tiny"):
            if model_type not in TINY:
                raise UserInputError(f"{name}: tiny = true: no tiny configuration for {model_type} (there is one "
                                     f"for {', '.join(sorted(TINY))}); set config fields instead")
            fields = {**copy.deepcopy(TINY[model_type]), **fields}
        make = lambda **kw: t.AutoConfig.for_model(model_type, **kw)  # noqa: E731
    else:
        path = config_path(target)
        default = t.AutoConfig.from_pretrained(str(path))
        model_type = default.model_type
        make = lambda **kw: t.AutoConfig.from_pretrained(str(path), **kw)  # noqa: E731
        if rest.get("tiny"):
            raise UserInputError(f"{name}: tiny = true applies to hf:MODEL_TYPE, not to a saved config")
    canonical = canonical_type(model_type)
    _check_fields(default, fields, name)
    kw = _merge(default, fields)
    if num_classes is not None and "num_labels" not in kw:
        kw["num_labels"] = num_classes
    try:
        config = make(**kw)
    except (TypeError, ValueError) as e:
        raise UserInputError(f"{name}: the config refuses these overrides: {str(e).splitlines()[0]}") from None
    _no_pretrained_backbone(config)
    return config, canonical


def _check_trainable(config) -> None:
    """A config whose model cannot run a step as configured: one line saying what to set. Only
    LW-DETR's defaults are known to: its projector has no level (`projector_scale_factors = []`),
    and the model fails in torch.cat with nothing to concatenate."""
    if config.model_type == "lw_detr" and not list(getattr(config, "projector_scale_factors", [1.0])):
        raise UserInputError("hf:lw_detr: its config has no projector level (projector_scale_factors = []: the "
                             "transformers default), so the model cannot run; set one, e.g. --set "
                             "'config.projector_scale_factors=[1.0]' (LW-DETR small's single P4 level), or "
                             "overrides = {\"config.projector_scale_factors\" = [1.0]} in a suite")


def _no_pretrained_backbone(config) -> None:
    """Random backbone weights: switch off every `use_pretrained_backbone` (config and sub-configs)."""
    for c in (config, getattr(config, "backbone_config", None)):
        if c is not None and getattr(c, "use_pretrained_backbone", False):
            c.use_pretrained_backbone = False


def supports_sdpa(model_type: str) -> bool:
    t = _transformers()
    detection, _ = _mappings()
    return bool(getattr(getattr(t, detection[model_type]), "_supports_sdpa", False))


def build_model(config, attn_implementation: str | None):
    """transformers' *ForObjectDetection from `config` with random weights."""
    t = _transformers()
    _check_trainable(config)
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        return t.AutoModelForObjectDetection.from_config(config, **kw)
    except ValueError as e:
        raise UserInputError(f"hf:{config.model_type}: {str(e).splitlines()[0]}") from None


def encoder_self_attention(name: str, module) -> bool:
    """ENACT's place in HF's DETR family: the encoder's self-attention modules (`...encoder...self_attn`;
    RT-DETR's AIFI layers are under `model.encoder.aifi`)."""
    return ".encoder." in f".{name}." and name.endswith("self_attn")


def source_fields(config, model_type: str) -> dict[str, Any]:
    """What the adapter needs besides the module: family, size multiple, notes."""
    return {"family": f"hf:{model_type}", "size_multiple": SIZE_MULTIPLE.get(model_type, 1),
            "notes": (NOTES[model_type],) if model_type in NOTES else (),
            "enact_skip": ENACT_SKIP.get(model_type)}
