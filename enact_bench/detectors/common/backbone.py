"""ResNet backbones as the DETR family builds them, and the Joiner that adds positional embeddings.

- torchvision ResNets (resnet18/34/50/101/152) with FrozenBatchNorm2d (statistics and affine
  parameters are buffers, never trained), `weights=None`: nothing downloads.
- The stem (conv1) and layer1 never train; layer2-4 train unless `train_backbone=False` (the
  originals' `lr_backbone <= 0`).
- `dilation=True` (DC5) replaces the stride of layer4 by dilation: stride 16 instead of 32.
- `return_layers` picks the levels returned, e.g. ("layer4",) for DETR, ("layer2", "layer3",
  "layer4") for Deformable DETR / DINO. Each level comes with the padding mask downsampled to
  its size (nearest, as the originals).
- State-dict keys are the originals': `backbone.0.body.<resnet module path>` once the detector
  stores `Joiner(backbone, position_embedding)` as `backbone` (position embedding at index 1,
  without parameters).
- `weights_path`: a local torchvision ResNet state_dict file (e.g. resnet50-0676ba61.pth from
  the torchvision model zoo) loaded strictly into the ResNet before its head is dropped.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..checkpoint import compare_state_dict
from .nested import downsample_mask

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
LAYER_NAMES = ("layer1", "layer2", "layer3", "layer4")
TRAINABLE_LAYERS = ("layer2", "layer3", "layer4")


class ResNetBody(nn.ModuleDict):
    """The ResNet's modules up to the last returned layer; forward returns the chosen levels.

    Holds the children under their torchvision names (conv1, bn1, relu, maxpool, layer1..4), so
    state-dict keys are those of torchvision's ResNet without `fc`.
    """

    def __init__(self, resnet: nn.Module, return_layers: Sequence[str]):
        last = max(LAYER_NAMES.index(name) for name in return_layers)
        keep = ("conv1", "bn1", "relu", "maxpool") + LAYER_NAMES[: last + 1]
        super().__init__(OrderedDict((name, getattr(resnet, name)) for name in keep))
        self.return_layers = tuple(return_layers)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        out: OrderedDict[str, Tensor] = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[name] = x
        return out


def load_torchvision_weights(resnet: nn.Module, weights_path: str | Path) -> None:
    """Load a local torchvision ResNet state_dict file strictly; errors say what was wrong."""
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights file not found: {path}. Pass backbone_weights=PATH to a torchvision "
            f"ResNet state_dict (.pth), e.g. resnet50-0676ba61.pth from download.pytorch.org/models/"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    report = compare_state_dict(resnet, state)
    if not report.ok:
        raise ValueError(f"{path} does not fit a torchvision {type(resnet).__name__}:\n{report.describe()}")
    resnet.load_state_dict(state)


def backbone_weights_path(pretrained_backbone: bool, weights: str | Path | None, backbone: str):
    """The local weights file to load, or None; nothing is ever downloaded."""
    if pretrained_backbone and weights is None:
        raise ValueError(
            "pretrained_backbone=True needs a local torchvision ResNet weights file: pass "
            f"backbone_weights='/path/to/{backbone}-<hash>.pth' (nothing is downloaded)"
        )
    if weights is not None and not pretrained_backbone:
        raise ValueError("backbone_weights is only read with pretrained_backbone=True")
    return weights if pretrained_backbone else None


class Backbone(nn.Module):
    """ResNet with frozen BatchNorm -> list of (feature (B, C_l, h_l, w_l), mask (B, h_l, w_l))."""

    def __init__(self, name: str = "resnet50", *, dilation: bool = False, train_backbone: bool = True,
                 return_layers: Sequence[str] = ("layer4",), weights_path: str | Path | None = None):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"backbone must be one of {RESNETS}; got {name!r}")
        bad = [layer for layer in return_layers if layer not in LAYER_NAMES]
        if bad or not return_layers:
            raise ValueError(f"return_layers must be a non-empty subset of {LAYER_NAMES}; got {tuple(return_layers)}")
        resnet = getattr(torchvision.models, name)(
            weights=None, replace_stride_with_dilation=[False, False, dilation], norm_layer=FrozenBatchNorm2d
        )
        if weights_path is not None:
            load_torchvision_weights(resnet, weights_path)
        for param_name, param in resnet.named_parameters():
            if not train_backbone or not param_name.startswith(TRAINABLE_LAYERS):
                param.requires_grad_(False)
        self.body = ResNetBody(resnet, return_layers)

        basic = name in ("resnet18", "resnet34")
        channels = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
        strides = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16 if dilation else 32}
        self.num_channels = [channels[l] * (1 if basic else 4) for l in return_layers]
        self.strides = [strides[l] for l in return_layers]

    def forward(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        feats = self.body(images)  # levels (B, C_l, h_l, w_l)
        return [(x, downsample_mask(mask, x.shape[-2:])) for x in feats.values()]


class Joiner(nn.Sequential):
    """Sequential(backbone, position_embedding): keys backbone.0.body.* as the originals.

    forward(images, mask) -> (levels, pos): levels is the backbone's list of (feature, mask),
    pos the positional embedding (B, D, h_l, w_l) of each level in the feature dtype.
    """

    def __init__(self, backbone: Backbone, position_embedding: nn.Module):
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels
        self.strides = backbone.strides

    def forward(self, images: Tensor, mask: Tensor) -> tuple[list[tuple[Tensor, Tensor]], list[Tensor]]:
        levels = self[0](images, mask)
        pos = [self[1](m).to(x.dtype) for x, m in levels]
        return levels, pos
