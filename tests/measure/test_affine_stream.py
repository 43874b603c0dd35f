"""measure/affine_stream.py: a step's allocation stream at any batch size from fake runs at three,
used only when a fourth matches it exactly. Hand-built streams (runs of per-image blocks, sizes
linear and quadratic in the batch, frees in reverse order), then a real detector's streams."""
from __future__ import annotations

import pytest

from enact_bench.measure.affine_stream import NotAffine, canonical, fit


def toy_stream(b: int):
    """Events of a toy step at batch b, with ops: weights (fixed), B images then B targets
    (per-image, counted in), an activation B x 1000 B, a (6B)^2 x 4 B matrix (DETR's box IoU),
    and per-image temporaries freed in reverse order (a cat over a list)."""
    ev, ops, key = [], [], iter(range(10**6))

    def alloc(n, op):
        k = next(key)
        ev.append(("alloc", k, n))
        ops.append(op)
        return k

    def free(k, n):
        ev.append(("free", k, n))
        ops.append(None)

    alloc(4096, None)
    for _ in range(b):
        alloc(3 * 64, None)
    for _ in range(b):
        alloc(48, None)
    act = alloc(1000 * b, "conv")
    iou = alloc(4 * (6 * b) ** 2, "giou")
    parts = [alloc(48, "full_like") for _ in range(b)]
    cat = alloc(48 * b, "cat")
    for k in reversed(parts):
        free(k, 48)
    free(iou, 4 * (6 * b) ** 2)
    free(cat, 48 * b)
    free(act, 1000 * b)
    return ev, ops


def test_fit_confirms_and_synthesizes_the_toy_stream_exactly():
    s = fit(2, [toy_stream(b) for b in (2, 3, 4)]).confirm(5, toy_stream(5)[0])
    assert s.confirmed_at == 5
    for b in (2, 5, 9, 40):
        events, origin = s.synthesize(b)
        assert canonical(events) == canonical(toy_stream(b)[0])
        assert len(origin) == len(events)


def test_a_stream_that_is_not_of_the_form_is_refused():
    def cubic(b):
        ev, ops = toy_stream(b)
        return [(k, key, n * b * b if ops[i] == "conv" else n) for i, (k, key, n) in enumerate(ev)], ops
    s = fit(2, [cubic(b) for b in (2, 3, 4)])  # three points fit any quadratic ...
    with pytest.raises(NotAffine):
        s.confirm(5, cubic(5)[0])  # ... the fourth shows the cubic
    ev2, ops2 = toy_stream(2)
    ev3, ops3 = toy_stream(3)
    ops3 = ["other" if o == "conv" else o for o in ops3]  # an op replaced, not a per-image block
    with pytest.raises(NotAffine):
        fit(2, [(ev2, ops2), (ev3, ops3), toy_stream(4)])


def test_batch_below_the_probes_is_refused():
    s = fit(2, [toy_stream(b) for b in (2, 3, 4)])
    with pytest.raises(ValueError):
        s.synthesize(1)


def test_check_pair_stops_at_a_structural_change():
    from enact_bench.measure.affine_stream import check_pair

    check_pair(2, toy_stream(2), toy_stream(3))  # the same events plus per-image blocks
    ev3, ops3 = toy_stream(3)
    with pytest.raises(NotAffine):  # one op fewer at the larger batch (deleted, not a per-image block)
        check_pair(2, toy_stream(2), ([e for i, e in enumerate(ev3) if ops3[i] != "giou"],
                                      [o for o in ops3 if o != "giou"]))
