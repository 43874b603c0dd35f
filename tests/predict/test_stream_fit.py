"""predict/stream_fit.py: a step's allocation stream at any batch size from fake runs at two
(with the tensors' shapes) or three, used only when one more matches it exactly. Hand-built streams
(runs of per-image blocks, sizes linear and quadratic in the batch, frees in reverse order)."""
from __future__ import annotations

import pytest

from enact_bench.predict.stream_fit import NotAffine, canonical, fit, fit_shapes


def toy_stream(b: int, with_shapes: bool = False):
    """Events of a toy step at batch b, with ops (and, with_shapes, each alloc's (shape, element
    size)): weights (fixed), B images then B targets (per-image, counted in), an activation
    B x 1000 B, a (6B)^2 x 4 B matrix (DETR's box IoU), and per-image temporaries freed in reverse
    order (a cat over a list)."""
    ev, ops, shapes, key = [], [], [], iter(range(10**6))

    def alloc(shape, size, op):
        n = size
        for d in shape:
            n *= d
        k = next(key)
        ev.append(("alloc", k, n))
        ops.append(op)
        shapes.append((shape, size))
        return k, n

    def free(kn):
        ev.append(("free", *kn))
        ops.append(None)
        shapes.append(None)

    alloc((1024,), 4, None)
    for _ in range(b):
        alloc((3, 8, 8), 1, None)
    for _ in range(b):
        alloc((6, 2), 4, None)
    act = alloc((b, 250), 4, "conv")
    iou = alloc((6 * b, 6 * b), 4, "giou")
    parts = [alloc((6, 2), 4, "full_like") for _ in range(b)]
    cat = alloc((6 * b, 2), 4, "cat")
    for k in reversed(parts):
        free(k)
    free(iou)
    free(cat)
    free(act)
    return (ev, ops, shapes) if with_shapes else (ev, ops)


def test_shape_fit_confirms_at_the_third_batch_and_synthesizes_the_toy_stream_exactly():
    s = fit_shapes(2, [toy_stream(b, True) for b in (2, 3)]).confirm(4, toy_stream(4)[0])
    assert s.confirmed_at == 4
    for b in (2, 4, 5, 9, 40):  # the IoU matrix's bytes are quadratic: (6B)^2 x 4 from two probes
        events, origin = s.synthesize(b)
        assert canonical(events) == canonical(toy_stream(b)[0])
        assert len(origin) == len(events)
    # the same streams through the three-probe quadratic give the same synthesis
    q = fit(2, [toy_stream(b) for b in (2, 3, 4)]).confirm(5, toy_stream(5)[0])
    assert all(canonical(q.synthesize(b)[0]) == canonical(s.synthesize(b)[0]) for b in (5, 17))


def test_shape_fit_without_shapes_is_linear_and_its_confirmation_refuses_the_quadratic():
    ev2, ops2, sh2 = toy_stream(2, True)
    ev3, ops3, sh3 = toy_stream(3, True)
    blind = [None if o == "giou" else x for o, x in zip(ops2, sh2)], [None if o == "giou" else x for o, x in zip(ops3, sh3)]
    s = fit_shapes(2, [(ev2, ops2, blind[0]), (ev3, ops3, blind[1])])
    with pytest.raises(NotAffine, match="batch 4"):  # the IoU matrix's bytes taken as linear miss at 4
        s.confirm(4, toy_stream(4)[0])


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
        act = next(key for (kind, key, _), op in zip(ev, ops) if op == "conv")  # its alloc and free
        return [(k, key, n * b * b if key == act else n) for k, key, n in ev], ops
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


def test_shape_fit_stops_at_a_structural_change():
    fit_shapes(2, [toy_stream(2, True), toy_stream(3, True)])  # the same events plus per-image blocks
    ev3, ops3, sh3 = toy_stream(3, True)
    iou = next(key for (_, key, _), op in zip(ev3, ops3) if op == "giou")
    keep = [i for i, (_, key, _) in enumerate(ev3) if key != iou]  # its alloc and its free
    with pytest.raises(NotAffine, match="not a per-image block"):  # one tensor fewer at the larger batch
        fit_shapes(2, [toy_stream(2, True), ([ev3[i] for i in keep], [ops3[i] for i in keep], [sh3[i] for i in keep])])
