"""The encoder/decoder FFN activations the originals accept (their `_get_activation_fn`)."""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """"relu" | "gelu" | "glu" -> the function; anything else is a ValueError listing them."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}; got {name!r}")
    return ACTIVATIONS[name]
