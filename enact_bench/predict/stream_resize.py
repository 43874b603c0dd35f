"""A confirmed-form allocation stream carried to another image size with one fake run there.

A run-worst plan needs the training step's stream at two padded sizes (the run's worst and the
typical 800 x 1333). The events, their order, the distances from each free back to its alloc and
the per-image blocks are the same at both sizes (the same ops run; only tensor sizes change), so
the template `stream_fit.fit_shapes` fitted at one size (probes at batch a and a + 1) serves the
other once each event's size there is known. One fake run at batch a at the other size gives
every event's size at a; the size's growth per image is carried over, dimension by dimension:

- a dimension equal at both sizes keeps its growth (the batch dimension, channels, queries);
- a dimension that differs and does not grow with the batch stays fixed (h, w, h x w, ...);
- a dimension that differs and grows with the batch must be proportional to it at the first size
  (dim = batch x f, e.g. batch x h x w merged): there it is batch x f' at the other size;
- anything else (an offset plus a growth that depends on the image) is refused.

Sizes without a shape (bytes affine in the batch) follow the same three rules on the bytes. A
per-image block's events take the size of the copy before them (the previous image's events,
which the fake run at a has). The result is only an assumption until `AffineStream.confirm`
checks it against a fake run at another batch size at that image size, event by event.

Pure Python, no torch.
"""
from __future__ import annotations

from enact_bench.predict.stream_fit import AffineStream, NotAffine, _bytes_at, canonical


def _carry_dims(dims, steps, new_dims, a: int, where: int) -> tuple[int, ...]:
    out = []
    for d, e, n in zip(dims, steps, new_dims):
        if n == d:
            out.append(e)
        elif e == 0:
            out.append(0)
        elif d == a * e and n % a == 0:
            out.append(n // a)
        else:
            raise NotAffine(f"event {where}: a dimension {d} -> {n} grows by {e} per image at one size, "
                            f"not in proportion to the batch")
    return tuple(out)


def _carry_size(size: tuple, nbytes: int, shape, a: int, where: int) -> tuple:
    """The size spec (stream_fit.AffineStream.template) at the other image size, whose fake run at
    batch a has `nbytes` and `shape` ((dims, element size) or None) for this event."""
    if size[0] == "p":
        _, elsize, dims, steps = size
        if shape is None or len(shape[0]) != len(dims) or shape[1] != elsize:
            raise NotAffine(f"event {where}: its tensor's shape differs in rank or dtype between the image sizes")
        new_dims = tuple(shape[0])
        spec = ("p", elsize, new_dims, _carry_dims(dims, steps, new_dims, a, where))
        if _bytes_at(spec, 0) != nbytes:
            raise NotAffine(f"event {where}: {nbytes} B is not its shape's {_bytes_at(spec, 0)} B")
        return spec
    _, n0, dn, dn2 = size
    if dn2:
        raise NotAffine(f"event {where}: a size quadratic in the batch")
    if nbytes == n0:
        return size
    return ("q", nbytes, _carry_dims((n0,), (dn,), (nbytes,), a, where)[0], 0)


def at_image_size(stream: AffineStream, events, shapes) -> AffineStream:
    """`stream` (fitted at one image size) at the image size of a fake run at its base batch:
    `events` and `shapes` as LiveTensorTracker records them (StepMeasure.events, .event_shapes).
    Unconfirmed: call `confirm` with a fake run at another batch size at that image size."""
    a = stream.base_batch
    canon = canonical(events)
    paired = sum(1 for item in stream.template if item[0] != "block")
    if paired != len(canon):
        raise NotAffine(f"{len(canon)} events at the other image size, {paired} in the stream at batch {a}")
    template: list = []
    sizes: dict[int, int] = {}  # a paired event's origin (its index at batch a + 1) -> its bytes at batch a here
    spec_of: dict[int, tuple] = {}  # the same origin -> its size spec at the stream's image size
    i = 0
    for item in stream.template:
        if item[0] == "block":
            template.append(item)
            continue
        kind, size, d0, dd, dd2, org = item
        k, nbytes, dist = canon[i]
        if k != kind or dist != d0:
            raise NotAffine(f"event {i}: ({k}, distance {dist}) at the other image size, ({kind}, {d0}) in the stream")
        template.append((kind, _carry_size(size, nbytes, shapes[i - dist], a, i), d0, dd, dd2, org))
        sizes[org], spec_of[org] = nbytes, size
        i += 1
    for n, item in enumerate(template):
        if item[0] != "block":
            continue
        copy = len(item[1])
        carried = []
        for kind, nbytes, dist, stride, growth, org in item[1]:
            before = org - copy  # the same event of the previous image's copy
            spec = spec_of.get(before)
            if spec is None or {_bytes_at(spec, 0), _bytes_at(spec, 1)} != {nbytes}:
                raise NotAffine(f"per-image event {org}: no copy of it for the image before, of the same size")
            carried.append((kind, sizes[before], dist, stride, growth, org))
        template[n] = ("block", tuple(carried))
    return AffineStream(a, tuple(template))

