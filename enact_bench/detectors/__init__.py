"""Detectors: a registry of faithful re-implementations of the DETR family, with and without ENACT.

    from enact_bench.detectors import create_detector, list_detectors, load_checkpoint
    model = create_detector("detr_r50", enact=True)

Shared parts (reused by every family): backbone (ResNet + FrozenBatchNorm, Joiner), position
(sine embedding), nested (padding + masks), matcher (Hungarian), criterion (set losses),
box_ops, postprocess, mlp. See docs/detectors.md.

Models we did not write: `create_detector("hf:detr")`, `"hf:PATH"`, `"py:pkg.mod:build"`,
`"my_model.py:build"` (detectors/sources.py); a factory returns an nn.Module in HF's convention or
a ModelSpec (detectors/model_spec.py, docs/own-model.md).
"""
from .base import Detector
from .checkpoint import CheckpointMismatchError, LoadReport, load_checkpoint
from .model_spec import ModelSpec
from .registry import DetectorSpec, build_variant, create_detector, get_spec, list_detectors, register_detector

__all__ = [
    "CheckpointMismatchError", "Detector", "DetectorSpec", "LoadReport", "ModelSpec", "build_variant", "create_detector",
    "get_spec",
    "list_detectors", "load_checkpoint", "register_detector",
]
