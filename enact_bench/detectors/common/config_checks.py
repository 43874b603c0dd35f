"""Validation shared by the families' frozen config dataclasses (called from `__post_init__`)."""
from __future__ import annotations

from .backbone import RESNETS
from .enact_layers import enact_layers


def check_backbone(cfg) -> None:
    if cfg.backbone not in RESNETS:
        raise ValueError(f"backbone must be one of {RESNETS}; got {cfg.backbone!r}")


def check_positive_ints(cfg, fields: tuple[str, ...]) -> None:
    for field in fields:
        value = getattr(cfg, field)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{field} must be a positive int; got {value!r}")


def check_dropout(cfg) -> None:
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {cfg.dropout}")


def normalise_enact_layers(cfg) -> None:
    """`enact_layers` (None = every encoder layer) -> a sorted tuple of valid layer indices."""
    if cfg.enact_layers is not None:
        object.__setattr__(cfg, "enact_layers", enact_layers(cfg.enc_layers, cfg.enact_layers))
