"""The Detector base class: the members every detector family provides (docs/CONTRACTS.md).

Subclasses implement `forward`, `build_criterion` and `postprocess`, and set `family`, `name`,
`enact_config`, `attention` and `default_optimizer_kwargs` in their constructor. The base
provides the originals' AdamW parameter groups (backbone parameters at `lr_backbone`, the rest
at `lr`) and `enact_stats()` over the modules listed by `enact_modules()`.
"""
from __future__ import annotations

from typing import Any, Iterator

from torch import Tensor, nn


class Detector(nn.Module):
    family: str = ""
    name: str = ""
    enact_config: Any = None  # None or enact.EnactConfig
    attention: str = "mha"
    # AdamW kwargs of the original training recipe, plus the backbone's own learning rate.
    default_optimizer_kwargs: dict[str, float] = {}
    default_lr_backbone: float = 0.0
    # max norm of the originals' gradient clipping (None: no clipping)
    grad_clip_max_norm: float | None = None

    def _set_recipe(self, cfg, num_classes: int, enact_config, lr: float) -> None:
        """The members every family takes from its config: the config itself, the class count,
        the ENACT config, auxiliary losses, and the original's AdamW kwargs and clipping."""
        self.cfg = cfg
        self.num_classes = num_classes
        self.aux_loss = cfg.aux_loss
        self.enact_config = enact_config
        self.default_optimizer_kwargs = {"lr": lr, "weight_decay": cfg.weight_decay}
        self.default_lr_backbone = cfg.lr_backbone
        self.grad_clip_max_norm = cfg.clip_max_norm

    def forward(self, images, mask: Tensor | None = None, targets: list[dict] | None = None) -> dict:
        raise NotImplementedError

    def build_criterion(self) -> nn.Module:
        raise NotImplementedError

    def postprocess(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        raise NotImplementedError

    def is_backbone_param(self, name: str) -> bool:
        """Parameters trained at `lr_backbone` (the originals test `"backbone" in name`)."""
        return "backbone" in name

    def param_groups(self, lr: float | None = None, lr_backbone: float | None = None,
                     weight_decay: float | None = None) -> list[dict]:
        """AdamW groups as the original: [rest @ lr, backbone @ lr_backbone]; frozen params left out."""
        lr = self.default_optimizer_kwargs["lr"] if lr is None else lr
        lr_backbone = self.default_lr_backbone if lr_backbone is None else lr_backbone
        weight_decay = self.default_optimizer_kwargs["weight_decay"] if weight_decay is None else weight_decay
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        return [
            {"params": [p for n, p in named if not self.is_backbone_param(n)], "lr": lr, "weight_decay": weight_decay},
            {"params": [p for n, p in named if self.is_backbone_param(n)], "lr": lr_backbone,
             "weight_decay": weight_decay},
        ]

    def enact_modules(self) -> Iterator[nn.Module]:
        """ENACT modules of the encoder in layer order; none without ENACT."""
        return iter(())

    def enact_stats(self) -> list[dict]:
        return [dict(m.last_stats) for m in self.enact_modules() if getattr(m, "last_stats", None) is not None]

    def extra_repr(self) -> str:
        enact = "off" if self.enact_config is None else repr(self.enact_config)
        return f"name={self.name!r}, family={self.family!r}, attention={self.attention!r}, enact={enact}"
