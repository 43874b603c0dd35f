"""A training step's allocation stream at any padded image size, at one batch size: `SizeStream`.

At a fixed batch size the events of a step, their order and the distance from each free back to
its alloc are the same at every image size (the same ops run); only sizes change. When H and W are
multiples of the backbone's largest stride Q (32 for DETR's C5; 64 for Deformable DETR and DINO,
whose extra level halves C5 again), every feature map side is exactly H / s or W / s, so every
dimension of every tensor is bilinear in (H, W): a constant, h, w, h x w (the flattened tokens),
or a sum of such terms (Deformable DETR's tokens over its levels); a tensor's bytes are the
element size times the product of its dimensions. Four fake runs at the corners (H0, W0),
(H0 + Q, W0), (H0, W0 + Q), (H0 + Q, W0 + Q) give each dimension's four coefficients
(`fit_sizes`); the stream at any (H0 + iQ, W0 + jQ) is then exact, which `SizeStream.confirm`
checks against a fifth fake run at a far size, event by event. Allocations without a shape have
their bytes fitted bilinear instead (the confirmation tests that too).

ENACT's windows add a condition: with cluster size L it pools floor(T / L) windows of the T
tokens and trims the T mod L left over, with other ops when there is a remainder. Where T (and
so every level's token count) is a multiple of L, the window count T / L is bilinear too and the
ops are the same; the corners are then L x Q apart (keeping T a multiple of L), and the model's
values at sizes between them are exact fractions (`synthesize`). The memory-efficient SDPA kernel
adds two: it pads a key-padding mask whose length is not a multiple of 8 (other ops; so the
fused variants keep T a multiple of 8 as well) and its logsumexp's query dimension to a multiple
of 32 (modelled as such: the "lse" size).

`plan --steps` rounds each drawn padded size up to such a size (`quantized`: multiples of Q,
token count a multiple of L; a batch is never smaller than what it pads to) and synthesizes each
step's stream here.

Pure Python, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from enact_bench.predict.stream_fit import NotAffine, canonical

FAMILY_QUANTUM = {"detr": 32, "conditional_detr": 32, "anchor_detr": 32, "deformable_detr": 64, "dino": 64}


def quantized(hw: tuple[int, int], quantum: int, multiple: int = 1) -> tuple[int, int]:
    """(H, W) rounded up to multiples of `quantum` such that (H / quantum) x (W / quantum) is a
    multiple of `multiple` (ENACT's cluster size L: then every level's token count is too, and
    the windows tile the tokens with none trimmed), the smallest such area."""
    h, w = (-(-x // quantum) for x in hw)
    best = min(((a * b, a, b) for a in range(h, h + multiple) for b in range(w, w + multiple) if (a * b) % multiple == 0),
               default=None)
    if best is None:  # e.g. a prime multiple larger than the range: one side a multiple of it
        a = -(-h // multiple) * multiple
        best = (a * w, a, w)
    return best[1] * quantum, best[2] * quantum


@dataclass(frozen=True)
class SizeStream:
    """The stream at one batch size as a function of the padded (H, W) (module docstring)."""

    batch: int
    origin_hw: tuple[int, int]  # (H0, W0), a valid size (see `quantized`)
    quantum: int
    spacing: int  # the corners' distance in units of quantum (ENACT's L, else 1)
    # per event: (kind, distance back to its alloc (0 for an alloc), size) with size ("p", element
    # size, ((d00, dh, dw, dhw), ...) per dimension), ("q", (n00, nh, nw, nhw)) for the bytes, or
    # ("lse", element size, (B, H) coefficients, the query count's) (`fit_sizes`): the
    # differences between the corners
    template: tuple
    confirmed_at: tuple[int, int] | None = None

    def __post_init__(self):
        if any(x % self.quantum for x in self.origin_hw):
            raise ValueError(f"SizeStream.origin_hw {self.origin_hw} must be multiples of the quantum {self.quantum}")

    def _steps(self, hw: tuple[int, int]) -> tuple[int, int]:
        if any(x % self.quantum for x in hw):
            raise ValueError(f"image size {hw}: the stream holds for multiples of {self.quantum} only")
        return (hw[0] - self.origin_hw[0]) // self.quantum, (hw[1] - self.origin_hw[1]) // self.quantum

    def synthesize(self, hw: tuple[int, int]) -> list[tuple[str, int, int]]:
        """The (kind, key, nbytes) stream at padded size hw (keys: the alloc's position). A value
        bilinear in (H, W) through the corners, at i, j quantum steps from the origin and corners
        s steps apart: (v00 s^2 + dh s i + dw s j + dhw i j) / s^2, exact where it divides."""
        i, j = self._steps(hw)
        sp = self.spacing
        s2, si, sj, ij = sp * sp, sp * i, sp * j, i * j

        def value(c) -> int:
            num = c[0] * s2 + c[1] * si + c[2] * sj + c[3] * ij
            if num % s2:
                raise NotAffine(f"size {hw[0]}x{hw[1]}: a dimension is not whole there ({num}/{s2})")
            return num // s2

        events: list[tuple[str, int, int]] = []
        for pos, (kind, dist, size) in enumerate(self.template):
            if size[0] == "p":
                nbytes = size[1]
                for c in size[2]:
                    nbytes *= value(c)
            elif size[0] == "lse":
                nbytes = size[1] * value(size[2][0]) * value(size[2][1]) * (-(-value(size[3]) // LSE_ALIGN) * LSE_ALIGN)
            else:
                nbytes = value(size[1])
            if nbytes < 0:
                raise NotAffine(f"size {hw}: event {pos} extrapolates to {nbytes} B")
            events.append((kind, pos - dist, nbytes))
        return events

    def confirm(self, hw: tuple[int, int], events) -> "SizeStream":
        """This stream, marked confirmed, if its synthesis at hw equals the recorded `events`
        exactly (canonical form); else NotAffine."""
        predicted, measured = canonical(self.synthesize(hw)), canonical(events)
        if predicted != measured:
            n = next((k for k, (p, m) in enumerate(zip(predicted, measured)) if p != m), min(len(predicted), len(measured)))
            raise NotAffine(f"size {hw[0]}x{hw[1]}: synthesized stream differs from the fake run at event {n} "
                            f"({len(predicted)} vs {len(measured)} events)")
        return SizeStream(self.batch, self.origin_hw, self.quantum, self.spacing, self.template, tuple(hw))


def corners(origin_hw: tuple[int, int], quantum: int, spacing: int = 1) -> list[tuple[int, int]]:
    """The four fake runs' sizes `fit_sizes` takes, in its order."""
    h, w = origin_hw
    d = quantum * spacing
    return [(h, w), (h + d, w), (h, w + d), (h + d, w + d)]


def _bilinear(v00: int, v10: int, v01: int, v11: int) -> tuple[int, int, int, int]:
    return v00, v10 - v00, v01 - v00, v11 - v10 - v01 + v00


LSE_ALIGN = 32  # the memory-efficient kernel pads its logsumexp to a multiple of 32 queries (attention.cu)


def _lse_queries(pos: int, probe) -> int | None:
    """For the logsumexp (B, H, L padded) the memory-efficient kernel allocates at `pos`, the
    query count L of its output (B, H, L, E) (laid out (B, L, H, E)), allocated by the same op
    next to it; else None."""
    events, shapes, ops = probe
    op = ops[pos]
    if op is None or "_efficient_attention" not in str(op) or shapes[pos] is None or len(shapes[pos][0]) != 3:
        return None
    b, h = shapes[pos][0][:2]
    for k in range(max(0, pos - 3), min(len(events), pos + 4)):
        sh = shapes[k]
        if k != pos and ops[k] == op and events[k][0] == "alloc" and sh is not None and len(sh[0]) == 4 \
                and tuple(sh[0][:2]) == (b, h):
            return sh[0][2]
    return None


def fit_sizes(batch: int, origin_hw: tuple[int, int], quantum: int, probes, spacing: int = 1) -> SizeStream:
    """The stream through four fake runs at the `corners` of (origin_hw, quantum, spacing), each an
    (events, shapes, ops) triple as LiveTensorTracker records them (StepMeasure.events,
    .event_shapes, .event_ops). Unconfirmed: call `confirm`.

    One dimension is not bilinear: the memory-efficient SDPA kernel's logsumexp has its query
    dimension padded to a multiple of 32; its size is kept as ("lse", element size, the other
    dimensions, the query count's coefficients), the count read from the kernel's output."""
    if len(probes) != 4:
        raise ValueError(f"fit_sizes needs four probes (the corners), got {len(probes)}")
    canons = [canonical(ev) for ev, _, _ in probes]
    if len({len(c) for c in canons}) != 1:
        raise NotAffine(f"the corners' streams have {sorted({len(c) for c in canons})} events")
    template = []
    for pos, events in enumerate(zip(*canons)):
        kinds, dists = {e[0] for e in events}, {e[2] for e in events}
        if len(kinds) != 1 or len(dists) != 1:
            raise NotAffine(f"event {pos}: the corners disagree on its kind or its alloc")
        kind, dist = kinds.pop(), dists.pop()
        shapes = [sh[pos - dist] for _, sh, _ in probes]
        queries = [_lse_queries(pos - dist, p) for p in probes]
        if all(q is not None for q in queries) and all(s[0][2] == -(-q // LSE_ALIGN) * LSE_ALIGN
                                                      for s, q in zip(shapes, queries)):
            dims = tuple(_bilinear(*(s[0][k] for s in shapes)) for k in range(2))
            size = ("lse", shapes[0][1], dims, _bilinear(*queries))
        elif all(s is not None for s in shapes) and len({(len(s[0]), s[1]) for s in shapes}) == 1:
            dims = tuple(_bilinear(*(s[0][k] for s in shapes)) for k in range(len(shapes[0][0])))
            size = ("p", shapes[0][1], dims)
        else:
            size = ("q", _bilinear(*(e[1] for e in events)))
        template.append((kind, dist, size))
    return SizeStream(batch, tuple(origin_hw), quantum, spacing, tuple(template))
