"""Which encoder layers get ENACT: one rule for every family (`enact_layers`, None = all)."""
from __future__ import annotations

from typing import Sequence


def enact_layers(num_layers: int, layers: Sequence[int] | None) -> tuple[int, ...]:
    """None -> every layer index; else the given indices, sorted and de-duplicated. Indices
    outside [0, num_layers), non-integers or an empty selection raise a ValueError."""
    if layers is None:
        return tuple(range(num_layers))
    chosen = tuple(layers)
    if not chosen or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers for i in chosen):
        raise ValueError(f"enact_layers must be a non-empty tuple of encoder layer indices in "
                         f"[0, {num_layers}); got {layers!r}")
    return tuple(sorted(set(chosen)))
