"""A training step's allocation stream at any batch size, from fake runs at two, confirmed at a third.

The ordered ("alloc" | "free", key, nbytes) stream a fake training step records (measure/
cpu_memory.py) changes with the batch size B in two ways only, for the detectors here: tensors whose
shape has a batch dimension change size (B x C x H x W; DETR's loss also builds a (targets x targets)
box-IoU matrix over the whole batch, two dimensions that grow with B), and loops over the images
(the inputs, the matcher, the loss's per-image indexing) repeat a block of events once per image.
So two probe streams, at batch a and a + 1, aligned op by op, say everything (`fit_shapes`):

- events present in both (aligned on (kind, op) tokens; a free's token is its alloc's op): every
  dimension of the tensor is affine in B, dim(B) = dim_a + (B - a) x (dim_{a+1} - dim_a), so its
  bytes are their product; the distance from a free back to its alloc is affine too (the events in
  between grow by whole per-image blocks);
- events only in the larger stream (the diff's inserts): one per-image block each, repeated B - a
  times at that place, with the sizes and distances of the probe at a + 1.

Any other difference (a replaced or deleted run of events) means the stream is not of this form,
and the fit refuses. The form is an assumption until a third probe confirms it: `AffineStream.confirm`
compares the synthesized stream at batch c with the one a fake run at c recorded, event by event
(kind, bytes, and which alloc each free frees); only a stream that matches exactly is used, and
only for batch sizes >= a. Streams are compared in the canonical form of `canonical`: keys (storage
ids, which Python reuses) replaced by each free's distance back to its alloc.

`fit` is the older form, for streams whose shapes do not explain them: three probes, each event's
bytes and distance quadratic through them, confirmed at a fourth.

Pure Python, no torch.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass


class NotAffine(ValueError):
    """The probe streams are not of the affine + repeated-block form."""


def canonical(events) -> list[tuple[str, int, int]]:
    """(kind, nbytes, distance): distance 0 for an alloc, index(free) - index(its alloc) for a free."""
    last: dict[int, int] = {}
    out = []
    for i, (kind, key, nbytes) in enumerate(events):
        if kind == "alloc":
            last[key] = i
            out.append(("alloc", nbytes, 0))
        else:
            j = last.pop(key, None)
            if j is None:
                raise NotAffine(f"event {i}: a free of a storage that is not live")
            out.append(("free", nbytes, i - j))
    return out


def _tokens(canon, ops) -> list[tuple]:
    """Per event what must match across batch sizes: the op that made the storage; for storages
    made outside any op (counted in at the start: parameters, state, inputs), their size."""
    toks = []
    for i, (kind, nbytes, dist) in enumerate(canon):
        j = i - dist
        op = ops[j]
        toks.append((kind, op) if op is not None else (kind, None, canon[j][1]))
    return toks


@dataclass(frozen=True)
class AffineStream:
    """The stream of a training step as a function of the batch size (module docstring)."""

    base_batch: int  # a: the smaller probe's batch size
    # in order: (kind, size, distance at a, its first and second difference per image, origin: index
    # in the probe stream at a + 1) per event present at every batch size, where size is ("q", bytes
    # at a, first and second difference) or ("p", element size, shape at a, its difference per
    # image); or ("block", ((kind, nbytes, distance, distance step per copy, distance step per
    # image, origin), ...)) per per-image block
    template: tuple
    confirmed_at: int | None = None  # batch size whose fake run matched the synthesized stream

    def __post_init__(self):
        if self.base_batch < 1:
            raise ValueError(f"base_batch must be >= 1, got {self.base_batch}")

    def synthesize(self, batch: int) -> tuple[list[tuple[str, int, int]], list[int]]:
        """The (kind, key, nbytes) stream at `batch` (keys: the alloc's position) and, per event,
        its origin in the probe at base_batch + 1 (for the breakdown's per-event classes)."""
        if batch < self.base_batch:
            raise ValueError(f"the affine stream holds for batch >= {self.base_batch}, got {batch}")
        k = batch - self.base_batch
        events: list[tuple[str, int, int]] = []
        origin: list[int] = []

        def emit(kind, nbytes, dist, org):
            pos = len(events)
            if nbytes < 0 or dist < 0 or (kind == "free" and dist == 0):
                raise NotAffine(f"batch {batch}: event {pos} extrapolates to {nbytes} B / distance {dist}")
            events.append((kind, pos if kind == "alloc" else pos - dist, nbytes))
            origin.append(org)

        for item in self.template:
            if item[0] == "block":  # a per-image block: repeated once per image beyond base_batch
                for c in range(k):
                    for kind, nbytes, dist, stride, growth, org in item[1]:
                        emit(kind, nbytes, dist + c * stride + (k - 1) * growth, org)
            else:
                kind, size, d0, dd, dd2, org = item
                emit(kind, _bytes_at(size, k), d0 + k * dd + k * (k - 1) // 2 * dd2, org)
        return events, origin

    def confirm(self, batch: int, events) -> "AffineStream":
        """This stream, marked confirmed, if its synthesis at `batch` equals the recorded `events`
        exactly (canonical form); else NotAffine."""
        predicted = canonical(self.synthesize(batch)[0])
        measured = canonical(events)
        if predicted != measured:
            n = next((i for i, (p, m) in enumerate(zip(predicted, measured)) if p != m), min(len(predicted), len(measured)))
            raise NotAffine(f"batch {batch}: synthesized stream differs from the fake run at event {n} "
                            f"({len(predicted)} vs {len(measured)} events)")
        return AffineStream(self.base_batch, self.template, batch)


def _greedy_inserts(ta, tb, window: int = 4, max_insert: int = 512) -> list[bool] | None:
    """Which events of tb are extra, walking both token lists: where they disagree, the shortest
    run of tb after which WINDOW tokens agree again is an insert. None when no such run exists or
    the walk does not end together (then difflib aligns them)."""
    inserted = [False] * len(tb)
    i = j = 0
    na, nb = len(ta), len(tb)
    while i < na and j < nb:
        if ta[i] == tb[j]:
            i += 1
            j += 1
            continue
        size = None
        for w in (min(window, na - i), 1):  # a shorter window where the next insert is near
            size = next((n for n in range(1, min(max_insert, nb - j) + 1)
                         if tb[j + n:j + n + w] == ta[i:i + w]), None)
            if size is not None:
                break
        if size is None:
            return None
        inserted[j:j + size] = [True] * size
        j += size
    if i != na:
        return None
    inserted[j:] = [True] * (nb - j)
    return inserted


def _align(ca, ta, cb, tb, batch_a: int):
    """difflib's alignment of two canonical streams (a at batch_a, b at batch_a + 1): yields
    ("pair", i, j) for an event in both and ("block", [(j, stride), ...]) per per-image block of b."""
    inserted = _greedy_inserts(ta, tb)
    if inserted is None:  # the greedy walk lost its way: difflib's (slower) alignment
        sm = difflib.SequenceMatcher(None, ta, tb, autojunk=False)
        inserted = [False] * len(tb)
        for tag, i1, i2, j1, j2 in sm.get_opcodes():
            if tag == "insert":
                inserted[j1:j2] = [True] * (j2 - j1)
            elif tag != "equal":
                raise NotAffine(f"batch {batch_a} -> {batch_a + 1}: events {tag}d at {i1}-{i2} (not a per-image block)")
    runs = []
    j = 0
    while j < len(tb):
        if inserted[j]:
            j1 = j
            while j < len(tb) and inserted[j]:
                j += 1
            runs.append((j1, j))
        else:
            j += 1
    # each run holds one copy of one or two per-image blocks (the last copy of a run of blocks
    # and the first of the next one, when difflib merges them); which copy of a run of blocks is
    # "the extra one" is arbitrary: slide each to the last copy, so the probes' alignments agree
    pieces = []
    for j1, j2 in runs:
        for p1, p2 in _pieces(tb, j1, j2):
            while p2 < len(tb) and not inserted[p2] and tb[p2] == tb[p1]:
                inserted[p1], inserted[p2] = False, True
                p1 += 1
                p2 += 1
            pieces.append((p1, p2))
    starts = {p1: p2 for p1, p2 in pieces}
    i = 0
    j = 0
    while j < len(tb):
        if j not in starts:
            if inserted[j]:
                raise NotAffine(f"batch {batch_a + 1}: event {j} inside two per-image blocks")
            yield ("pair", i, j)
            i += 1
            j += 1
            continue
        p1, p2 = j, starts[j]
        size = p2 - p1
        # a free's distance may grow copy by copy (frees in reverse order of their allocs: the
        # i-th free of a run is 2i events from its alloc): the step from the copy before
        if p1 - size >= 0 and tb[p1 - size:p1] == tb[p1:p2]:
            strides = [cb[q][2] - cb[q - size][2] for q in range(p1, p2)]
        else:
            strides = [0] * size
        yield ("block", list(zip(range(p1, p2), strides)))
        j = p2
    if i != len(ta):
        raise NotAffine(f"batch {batch_a} -> {batch_a + 1}: alignment left {len(ta) - i} events unpaired")


def fit(batch_a: int, probes) -> AffineStream:
    """The stream through three probes at batch_a, batch_a + 1, batch_a + 2: `probes` is three
    (events, ops) pairs as LiveTensorTracker records them. Unconfirmed: call `confirm` with a
    fourth. Sizes and distances are quadratic in the batch size through the three probes (a
    detector's loss may build a (targets x targets) matrix over the whole batch, e.g. DETR's
    generalized_box_iou of all matched boxes); the per-image blocks' sizes must not change."""
    if len(probes) != 3:
        raise ValueError(f"fit needs three probes (batch a, a+1, a+2), got {len(probes)}")
    cs = [canonical(ev) for ev, _ in probes]
    ts = [_tokens(c, ops) for c, (_, ops) in zip(cs, probes)]
    c2, c3, c4 = cs
    to4 = {j: k for tag, *rest in _align(c3, ts[1], c4, ts[2], batch_a + 1) if tag == "pair" for j, k in [rest]}
    if len(to4) != len(c3):
        raise NotAffine(f"batch {batch_a + 1} -> {batch_a + 2}: not every event carries over")
    template: list = []
    for item in _align(c2, ts[0], c3, ts[1], batch_a):
        if item[0] == "pair":
            _, i, j = item
            kind, n2, d2 = c2[i]
            _, n3, d3 = c3[j]
            _, n4, d4 = c4[to4[j]]
            template.append((kind, ("q", n2, n3 - n2, (n4 - n3) - (n3 - n2)), d2, d3 - d2, (d4 - d3) - (d3 - d2), j))
        else:
            events = []
            for j, stride in item[1]:
                if c4[to4[j]][1] != c3[j][1]:
                    raise NotAffine(f"batch {batch_a + 1}: per-image event {j} changes size with the batch")
                # the distance back to an alloc made before this block may also span other
                # per-image blocks: it grows with the batch as in the probe at a + 2
                events.append((c3[j][0], c3[j][1], c3[j][2], stride, c4[to4[j]][2] - c3[j][2], j))
            template.append(("block", tuple(events)))
    return AffineStream(batch_a, tuple(template))


def fit_shapes(batch_a: int, probes) -> AffineStream:
    """The stream through two probes at batch_a and batch_a + 1, `probes` being two (events, ops,
    shapes) triples as LiveTensorTracker records them (shapes: per alloc, (shape, element size) of
    a tensor spanning the storage, or None). Unconfirmed: call `confirm` with a third, at
    batch_a + 2.

    Where `fit` needs a third probe, this reads it from the shapes: every dimension of a tensor is
    taken as affine in the batch size, so the (targets x targets) matrix of DETR's loss is the
    product of two affine dimensions, exact at every batch size, where its bytes are a quadratic.
    An alloc without a shape (a view onto a larger storage) is taken as linear in bytes; the
    distance from a free back to its alloc as linear too. What an extra copy of a per-image block
    gains in distance per image is what the copy before it (the previous image's) gained from a to
    a + 1; a block with no copy before it gains one copy of every per-image block between its
    alloc and its free (including the alloc's own). The confirmation at batch_a + 2
    tests all of this at once; a size that is a polynomial with non-negative coefficients and no
    curvature between a, a + 1 and a + 2 is linear."""
    if len(probes) != 2:
        raise ValueError(f"fit_shapes needs two probes (batch a, a+1), got {len(probes)}")
    (ev_a, ops_a, sh_a), (ev_b, ops_b, sh_b) = probes
    ca, cb = canonical(ev_a), canonical(ev_b)
    tb = _tokens(cb, ops_b)
    items = list(_align(ca, _tokens(ca, ops_a), cb, tb, batch_a))
    item_of = [0] * len(cb)
    step_b: dict[int, int] = {}  # per paired event of b: its distance's gain from a to a + 1
    blocks_before = [0]  # per item: events of per-image blocks (one copy each) before it
    for n, item in enumerate(items):
        if item[0] == "pair":
            _, i, j = item
            item_of[j] = n
            step_b[j] = cb[j][2] - ca[i][2]
            blocks_before.append(blocks_before[-1])
        else:
            for j, _ in item[1]:
                item_of[j] = n
            blocks_before.append(blocks_before[-1] + len(item[1]))
    template: list = []
    for item in items:
        if item[0] == "pair":
            _, i, j = item
            kind, na, da = ca[i]
            _, nb, db = cb[j]
            template.append((kind, _size_spec(na, nb, sh_a[i - da], sh_b[j - db]), da, db - da, 0, j))
            continue
        events = []
        size = len(item[1])
        j1 = item[1][0][0]
        # the copy of this block for the image before (a paired run of the same tokens): each
        # extra copy's distance gains per image what that copy's gained from a to a + 1
        before = j1 - size >= 0 and tb[j1 - size:j1] == tb[j1:j1 + size] and all(q in step_b for q in range(j1 - size, j1))
        for j, stride in item[1]:
            kind, nbytes, dist = cb[j]
            if kind == "alloc":
                growth = 0
            elif before:
                growth = step_b[j - size]
            else:  # no copy before: one copy of each per-image block between the alloc and the free
                growth = blocks_before[item_of[j]] - blocks_before[item_of[j - dist]]
            events.append((kind, nbytes, dist, stride, growth, j))
        template.append(("block", tuple(events)))
    return AffineStream(batch_a, tuple(template))


def _size_spec(na: int, nb: int, shape_a, shape_b) -> tuple:
    """An event's bytes as a function of the batch (see AffineStream.template): each dimension
    affine where both probes have the shape, else the bytes themselves affine."""
    if shape_a is not None and shape_b is not None and len(shape_a[0]) == len(shape_b[0]) and shape_a[1] == shape_b[1]:
        return ("p", shape_a[1], shape_a[0], tuple(y - x for x, y in zip(shape_a[0], shape_b[0])))
    return ("q", na, nb - na, 0)


def _bytes_at(size: tuple, k: int) -> int:
    """Bytes of a size spec k images beyond the base batch (-1 where a dimension turns negative)."""
    if size[0] == "q":
        _, n0, dn, dn2 = size
        return n0 + k * dn + k * (k - 1) // 2 * dn2
    _, nbytes, dims, steps = size
    for d, e in zip(dims, steps):
        d += k * e
        if d < 0:
            return -1
        nbytes *= d
    return nbytes


def _pieces(tb, j1: int, j2: int) -> list[tuple[int, int]]:
    """Split the inserted run tb[j1:j2] into per-image blocks: difflib may merge the extra copies
    of two neighbouring runs of blocks into one insert (images I, then targets T: I I T T against
    I I I T T T reads as I I [I T] T T). A piece repeats the tokens just before it (the shortest
    such prefix: the end of a run) or just after the insert (the rest: the start of a run)."""
    out = []
    pos = j1
    while pos < j2:
        rest = j2 - pos
        if j2 + rest <= len(tb) and tb[pos:j2] == tb[j2:j2 + rest]:
            out.append((pos, j2))
            break
        for size in range(1, rest + 1):
            if pos - size >= 0 and tb[pos:pos + size] == tb[pos - size:pos]:
                break
        else:
            size = rest
        out.append((pos, pos + size))
        pos += size
    return out
