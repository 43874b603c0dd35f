"""load_checkpoint: original-release checkpoints ({"model": state_dict}) or bare state_dicts.

Files are read with `torch.load(weights_only=True)`: tensors, plain containers and numbers, plus
exactly what the originals' training scripts pickle beyond that (SAFE_GLOBALS). The `main.py` of
facebookresearch/detr, fundamentalvision/Deformable-DETR, IDEA-Research/DINO and the three
models of GSavathrakis/ENACT save {"model", "optimizer", "lr_scheduler", "epoch", "args"} (DINO
adds "ema_model" when it trains with EMA), where `optimizer` and `lr_scheduler` are state_dicts
(StepLR, MultiStepLR with its collections.Counter of milestones, or OneCycleLR; all loadable
with weights_only) and `args` is an argparse.Namespace (DINO's also carries its config file's
values: numbers, strings, lists, dicts, None). Anything else in the pickle is refused unless the
caller passes trust=True (`--trust-checkpoint`), because the full unpickler can run code.

Strict loading raises a CheckpointMismatchError whose first line names the first few missing
and unexpected keys and shape mismatches (with counts), so a wrong variant or family is obvious
on the console; the following lines list more. Non-strict loading returns a LoadReport.
"""
from __future__ import annotations

import argparse
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

SHOWN = 12  # keys listed per kind in the full description
SHOWN_FIRST_LINE = 3  # keys per kind on the first (console) line
# Classes the originals' checkpoints pickle besides tensors and plain containers (see above).
SAFE_GLOBALS = (argparse.Namespace,)
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save since 1.6
_PICKLE_PROTOCOLS = range(2, 6)  # the legacy format (torch < 1.6) is a pickle, protocol 2


class CheckpointError(ValueError):
    """The file cannot be read as a checkpoint (not a torch file, or refused by weights_only)."""


class NotACheckpointError(CheckpointError):
    pass


class UntrustedCheckpointError(CheckpointError):
    pass


class CheckpointMismatchError(RuntimeError):
    pass


def looks_like_torch_file(path: str | Path) -> bool:
    """True if the file starts like something torch.save writes (a zip archive or a pickle)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head == _ZIP_MAGIC or (len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS)


def looks_like_safetensors(path: str | Path) -> bool:
    """True if the file starts like a safetensors file (HF's save_pretrained): an 8-byte
    little-endian header length, then the JSON header's '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100 * 2**20


def load_torch_file(path: str | Path, trust: bool = False):
    """torch.load on the CPU with weights_only=True and SAFE_GLOBALS; the full unpickler only
    with trust=True. Raises NotACheckpointError / UntrustedCheckpointError with one-line reasons."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if looks_like_safetensors(path):  # tensors only: nothing to trust
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    if not looks_like_torch_file(path):
        raise NotACheckpointError(f"not a PyTorch checkpoint: {path} (expected a file written by torch.save)")
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust and "Weights only load failed" in str(e):
            refused = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln
                            or "Unsupported operand" in ln), "it holds objects other than tensors and training state")
            raise UntrustedCheckpointError(
                f"{path}: refused by torch.load(weights_only=True): {refused}. Pass --trust-checkpoint "
                f"(suite key trust_checkpoint = true) only if you trust its source: unpickling can run code") from None
        raise NotACheckpointError(f"not a PyTorch checkpoint: {path} ({type(e).__name__}: {e})") from None
    except (EOFError, RuntimeError, ValueError, OSError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise NotACheckpointError(f"not a PyTorch checkpoint: {path} ({type(e).__name__}: {first})") from None


@dataclass
class LoadReport:
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    shape_mismatches: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, checkpoint, model

    @property
    def ok(self) -> bool:
        return not (self.missing_keys or self.unexpected_keys or self.shape_mismatches)

    def summary(self) -> str:
        """One line: counts and the first few keys of each kind."""
        parts = []
        for label, items in (("missing", self.missing_keys), ("unexpected", self.unexpected_keys)):
            if items:
                more = ", ..." if len(items) > SHOWN_FIRST_LINE else ""
                parts.append(f"{len(items)} {label} key{'s' if len(items) != 1 else ''} "
                             f"({', '.join(items[:SHOWN_FIRST_LINE])}{more})")
        if self.shape_mismatches:
            k, a, b = self.shape_mismatches[0]
            more = ", ..." if len(self.shape_mismatches) > 1 else ""
            parts.append(f"{len(self.shape_mismatches)} shape mismatch{'es' if len(self.shape_mismatches) != 1 else ''}"
                         f" ({k}: checkpoint {tuple(a)} vs model {tuple(b)}{more})")
        return "; ".join(parts) if parts else "all keys match"

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


def read_state_dict(path_or_state_dict: str | Path | Mapping[str, Tensor], trust: bool = False) -> dict[str, Tensor]:
    """A path to a torch file or a mapping -> the bare state_dict (unwrapping {"model": ...}).
    trust: allow the full unpickler (see the module docstring)."""
    obj = path_or_state_dict
    if isinstance(obj, (str, Path)):
        obj = load_torch_file(obj, trust=trust)
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
                    strict: bool = True, trust: bool = False) -> LoadReport:
    """Load weights into `model`. strict: every key and shape must match, else CheckpointMismatchError.
    trust: read the file with the full unpickler (only for files from a source you trust)."""
    state = read_state_dict(path_or_state_dict, trust=trust)
    report = compare_state_dict(model, state)
    name = getattr(model, "name", "") or type(model).__name__
    if strict and not report.ok:
        raise CheckpointMismatchError(f"checkpoint does not fit {name}: {report.summary()}\n{report.describe()}")
    if report.shape_mismatches:
        bad = {k for k, _, _ in report.shape_mismatches}
        state = {k: v for k, v in state.items() if k not in bad}
    model.load_state_dict(state, strict=False)
    return report
