"""The worst sizes of the originals' augmentation (data/augmentation_sizes.py) against the resize
arithmetic itself: brute force over every source image in a bounded range, and witnesses."""
from __future__ import annotations

from fractions import Fraction

import pytest

from enact_bench.data.augmentation_sizes import (DETR_AUGMENTATION, MAX_SIZE, TRAIN_SCALES, _simplest_between,
                                                 detr_resize_hw, max_long_side, worst_from_sizes, worst_padded_batch,
                                                 worst_single_image)


def _brute(max_aspect: Fraction, max_short: int):
    """Every source image (long x short, short <= max_short, long / short <= max_aspect) at the
    largest scale: above max_size only clamped draws reach, and a clamped draw's output does not
    depend on the scale drawn; the largest area comes from the largest scale too."""
    s = max(TRAIN_SCALES)
    longest, area = 0, 0
    for short in range(1, max_short + 1):
        for long in range(short, int(short * max_aspect) + 1):
            h, w = detr_resize_hw(long, short, s, MAX_SIZE)
            longest, area = max(longest, h, w), max(area, h * w)
    return longest, area


@pytest.mark.parametrize("aspect, max_short", [(Fraction(201, 100), 400), (Fraction(4), 250), (Fraction(10), 120)])
def test_the_longest_side_is_the_brute_force_maximum_and_its_witness_reaches_it(aspect, max_short):
    got = max_long_side(DETR_AUGMENTATION, aspect)
    longest, area = _brute(aspect, max_short)
    h, w = got.source_hw
    assert w <= max_short and Fraction(h, w) <= aspect  # the witness lies in the brute-forced range
    assert max(detr_resize_hw(h, w, max(TRAIN_SCALES), MAX_SIZE)) == got.long_side
    assert longest == got.long_side  # nothing in the range goes beyond it
    assert area == 800 * 1333  # and no output has more pixels than 800 x 1333


def test_the_rounding_goes_beyond_max_size_only_for_elongated_images():
    sides = [max_long_side(DETR_AUGMENTATION, a).long_side for a in (Fraction(5, 3), 2, Fraction(201, 100), 4, 10)]
    assert sides == sorted(sides)  # more elongated sources can only reach further
    assert sides[0] == sides[1] == 1333 and 1334 <= sides[-1] <= 1337


def test_the_single_image_and_the_padded_batch():
    assert worst_single_image() == (800, 1333)
    long_side = max_long_side().long_side
    assert worst_padded_batch() == (long_side, long_side) and long_side > 1333


def test_the_crop_branch_never_goes_beyond_800_by_1250():
    outs = {detr_resize_hw(h, w, s, MAX_SIZE) for h in range(384, 601, 8) for w in range(384, 601, 8)
            for s in TRAIN_SCALES}
    assert max(max(hw) for hw in outs) == 1250 and max(h * w for h, w in outs) == 800 * 1250
    assert tuple(sorted(DETR_AUGMENTATION.crop_branch_max_hw())) == (800, 1250)


def test_a_datasets_sizes_give_the_exact_worst():
    # a 480 x 640 landscape and a 640 x 427 portrait: 800 x 1066 and 1199 x 800 at the largest scale;
    # the crop branch's 1250 x 800 / 800 x 1250 is larger in both directions
    d = worst_from_sizes([(480, 640), (640, 427), (480, 640)])
    assert d.images == 3 and d.distinct_sizes == 2
    assert d.padded_hw == (1250, 1250) and d.single_hw == (800, 1250)
    d = worst_from_sizes([(360, 640)])  # 16:9: clamped to 750 x 1333 (999,750 pixels: the crop's 10^6 win)
    assert d.padded_hw == (1250, 1333) and d.single_hw == (800, 1250)
    with pytest.raises(ValueError, match="no image sizes"):
        worst_from_sizes([])


@pytest.mark.parametrize("lo, hi, lo_in, hi_in, want", [
    (Fraction(1, 3), Fraction(1, 2), True, False, Fraction(1, 3)),
    (Fraction(1, 3), Fraction(1, 2), False, True, Fraction(1, 2)),
    (Fraction(1, 3), Fraction(1, 2), False, False, Fraction(2, 5)),
    (Fraction(3), Fraction(7, 2), False, False, Fraction(10, 3)),
    (Fraction(5, 2), Fraction(4), False, False, Fraction(3)),
])
def test_simplest_fraction_in_an_interval(lo, hi, lo_in, hi_in, want):
    got = _simplest_between(lo, hi, lo_in, hi_in)
    assert got == want
    # no fraction with a smaller denominator lies inside
    for q in range(1, got.denominator):
        for p in range(int(lo * q) - 1, int(hi * q) + 2):
            x = Fraction(p, q)
            inside = (lo < x or (lo_in and x == lo)) and (x < hi or (hi_in and x == hi))
            assert not inside
