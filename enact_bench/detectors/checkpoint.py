"""load_checkpoint: original-release checkpoints ({"model": state_dict}) or bare state_dicts.

Strict loading raises a CheckpointMismatchError that lists the missing keys, the unexpected
keys and any shape mismatches (first few of each, with counts), so a wrong variant or family is
obvious. Non-strict loading returns the same information as a LoadReport.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

SHOWN = 12


class CheckpointMismatchError(RuntimeError):
    pass


@dataclass
class LoadReport:
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    shape_mismatches: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, checkpoint, model

    @property
    def ok(self) -> bool:
        return not (self.missing_keys or self.unexpected_keys or self.shape_mismatches)

    def describe(self) -> str:
        parts = []
        for label, items in (("missing keys (in the model, not in the checkpoint)", self.missing_keys),
                             ("unexpected keys (in the checkpoint, not in the model)", self.unexpected_keys)):
            if items:
                more = f" ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:SHOWN])}{more}")
        if self.shape_mismatches:
            shown = [f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.shape_mismatches[:SHOWN]]
            parts.append(f"{len(self.shape_mismatches)} shape mismatches: {'; '.join(shown)}")
        return "\n".join(parts) if parts else "all keys match"


def read_state_dict(path_or_state_dict: str | Path | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A path to a torch file or a mapping -> the bare state_dict (unwrapping {"model": ...})."""
    obj = path_or_state_dict
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, Mapping):
        raise TypeError(f"a checkpoint must be a state_dict or a dict with a 'model' entry; got {type(obj).__name__}")
    if "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"not a state_dict: entries {bad[:5]} are not tensors "
                        f"(expected a bare state_dict or {{'model': state_dict}})")
    return dict(obj)


def compare_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> LoadReport:
    own = model.state_dict()
    report = LoadReport(
        missing_keys=[k for k in own if k not in state],
        unexpected_keys=[k for k in state if k not in own and not k.endswith("num_batches_tracked")],
    )
    report.shape_mismatches = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
                               if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return report


def load_checkpoint(model: nn.Module, path_or_state_dict: str | Path | Mapping[str, Tensor],
                    strict: bool = True) -> LoadReport:
    """Load weights into `model`. strict: every key and shape must match, else CheckpointMismatchError."""
    state = read_state_dict(path_or_state_dict)
    report = compare_state_dict(model, state)
    name = getattr(model, "name", "") or type(model).__name__
    if strict and not report.ok:
        raise CheckpointMismatchError(f"checkpoint does not fit {name}:\n{report.describe()}")
    if report.shape_mismatches:
        bad = {k for k, _, _ in report.shape_mismatches}
        state = {k: v for k, v in state.items() if k not in bad}
    model.load_state_dict(state, strict=False)
    return report
