"""Shared detector parts live once in detectors/common/ and every family uses them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from enact_bench.detectors import create_detector, list_detectors
from enact_bench.detectors.common.activation import activation_fn
from enact_bench.detectors.common.enact_layers import enact_layers

DETECTORS = Path(__file__).resolve().parents[2] / "enact_bench" / "detectors"


def test_enact_layers_rule():
    assert enact_layers(6, None) == (0, 1, 2, 3, 4, 5)
    assert enact_layers(6, [3, 1, 1]) == (1, 3)
    for bad in ([6], [], [-1], [True], [1.0]):
        with pytest.raises(ValueError, match=r"enact_layers must be a non-empty tuple of encoder layer indices in \[0, 6\)"):
            enact_layers(6, bad)


@pytest.mark.parametrize("name", list_detectors(tiny=True))
def test_every_family_applies_the_same_enact_layers_rule(name):
    with pytest.raises(ValueError, match=r"enact_layers must be a non-empty tuple of encoder layer indices"):
        create_detector(name, enact=True, enact_layers=(99,))
    model = create_detector(name, enact=True, enact_layers=(0,))
    assert model.cfg.enact_layers == (0,)


def test_activation_lookup():
    with pytest.raises(ValueError, match=r"activation must be one of \('relu', 'gelu', 'glu'\); got 'tanh'"):
        activation_fn("tanh")


def test_each_shared_function_is_defined_once():
    defs: dict[str, list[str]] = {}
    for path in DETECTORS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.col_offset == 0:
                defs.setdefault(node.name, []).append(str(path.relative_to(DETECTORS)))
    for name in ("inverse_sigmoid", "activation_fn", "enact_layers"):
        assert len(defs.get(name, [])) == 1 and defs[name][0].startswith("common/"), (name, defs.get(name))


def test_family_configs_share_one_base_and_its_checks():
    import dataclasses

    from enact_bench.detectors.anchor_detr import AnchorDetrConfig
    from enact_bench.detectors.common.config import DetectorConfig
    from enact_bench.detectors.conditional_detr import ConditionalDetrConfig
    from enact_bench.detectors.deformable_detr import DeformableDetrConfig
    from enact_bench.detectors.detr import DetrConfig
    from enact_bench.detectors.dino import DinoConfig

    shared = [f.name for f in dataclasses.fields(DetectorConfig)]
    for cls in (DetrConfig, ConditionalDetrConfig, AnchorDetrConfig, DeformableDetrConfig, DinoConfig):
        assert issubclass(cls, DetectorConfig)
        assert [f.name for f in dataclasses.fields(cls)][:len(shared)] == shared
        with pytest.raises(ValueError, match="dropout must be in"):
            cls(dropout=1.5)
        with pytest.raises(ValueError, match="backbone must be one of"):
            cls(backbone="vgg16")
        with pytest.raises(dataclasses.FrozenInstanceError):
            cls().hidden_dim = 1
    # the families' own defaults survive (from their releases)
    assert (AnchorDetrConfig().dilation, AnchorDetrConfig().dropout, DeformableDetrConfig().lr, DinoConfig().lr) == \
        (True, 0.0, 2e-4, 1e-4)
