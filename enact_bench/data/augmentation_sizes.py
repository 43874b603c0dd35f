"""The sizes the originals' training augmentation gives an image, and the largest batch it pads to.

Pure Python (no torch). Every family here trains with DETR's COCO augmentation
(facebookresearch/detr datasets/coco.py `make_coco_transforms("train")`, the same in Conditional
DETR, Anchor DETR, Deformable DETR and DINO's `data_aug_scales` / `data_aug_max_size`):

    RandomHorizontalFlip, then with p = 0.5 either
      RandomResize(scales = 480, 512, ..., 800, max_size = 1333)
    or
      RandomResize([400, 500, 600]) -> RandomSizeCrop(384, 600) -> RandomResize(scales, max_size = 1333)

and a batch is padded to the largest height and the largest width of its images
(util/misc.py `nested_tensor_from_tensor_list`). The resize is datasets/transforms.py's
`get_size_with_aspect_ratio`, restated in `detr_resize_hw` with the same float arithmetic:

    if long / short * size > max_size:  size = int(round(max_size * short / long))
    the short side becomes size, the long side int(size * long / short)

Because the clamped size is rounded (half to even) and the long side then truncated, an
elongated image can come out with its long side above max_size: with r = long / short and
k = round(max_size / r) the long side is int(k * r) < k * max_size / (k - 1/2), i.e. up to
max_size + max_size / (2k - 1). How far above depends on how elongated the source images are:
`max_long_side` finds the exact maximum over every source image whose aspect ratio is at most A
(exact rational arithmetic over the ranges of r that round to each k, then checked on a witness
image through `detr_resize_hw`): 1333 up to A = 2, 1334 up to A = 4, 1335 at A = 5 and 6, 1336 at
A = 8, 1337 at A = 10, 1342 at A = 20.

The crop branch cannot do more: after the crop both sides are in [384, 600], so r <= 600/384
and the last resize is never clamped; its largest output is 800 x 1250.

So, for aspect ratios up to A:
- one image (batch 1) is at most 800 x 1333 pixels (or 1333 x 800): the largest area any output
  has (`worst_single_image`);
- a batch of two or more is padded to at most L x L, L = `max_long_side` (a portrait image gives
  the height, a landscape one the width): `worst_padded_batch`.
Without the dataset's sizes we assume A = ASSUMED_MAX_ASPECT (10: strips and panoramas included;
an assumption, not a measurement); `worst_from_sizes` gives the exact figures for a list of source
sizes (e.g. a COCO annotation file's images).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable

TRAIN_SCALES = tuple(range(480, 801, 32))  # 480, 512, ..., 800
VAL_SIZE = 800
MAX_SIZE = 1333
PRE_CROP_SIZES = (400, 500, 600)
CROP_MIN, CROP_MAX = 384, 600
TYPICAL_HW = (800, 1333)  # the originals' validation size of a 3:4 or wider landscape image: the "typical" batch
ASSUMED_MAX_ASPECT = Fraction(10)  # long side / short side of the source images: an ASSUMPTION


def detr_resize_hw(h: int, w: int, size: int, max_size: int | None) -> tuple[int, int]:
    """DETR's get_size_with_aspect_ratio: shorter side -> size, longer side <= max_size (up to
    the rounding described in the module docstring).

    Same arithmetic as the original (round the reduced size, truncate the long side), which
    differs by a pixel from torchvision's Resize(max_size=...) on some aspect ratios."""
    if max_size is not None:
        short, long = float(min(h, w)), float(max(h, w))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


@dataclass(frozen=True)
class Augmentation:
    """A family's training resize (module docstring): scales and max_size of the multi-scale
    resize, and the crop branch's pre-resize sizes and crop bounds."""

    scales: tuple[int, ...] = TRAIN_SCALES
    max_size: int = MAX_SIZE
    pre_crop_sizes: tuple[int, ...] = PRE_CROP_SIZES
    crop_min: int = CROP_MIN
    crop_max: int = CROP_MAX
    source: str = "facebookresearch/detr datasets/coco.py make_coco_transforms('train')"

    def __post_init__(self):
        if not self.scales or min(self.scales) < 1:
            raise ValueError(f"Augmentation.scales must be positive sizes, got {self.scales!r}")
        if self.max_size < max(self.scales):
            raise ValueError(f"Augmentation.max_size ({self.max_size}) must be >= the largest scale ({max(self.scales)})")
        if not 0 < self.crop_min <= self.crop_max:
            raise ValueError(f"Augmentation: need 0 < crop_min <= crop_max, got {self.crop_min}, {self.crop_max}")

    def crop_branch_max_hw(self) -> tuple[int, int]:
        """The largest (h, w) the crop branch gives, portrait: a crop_max x crop_min crop (the most
        elongated one) resized at the largest scale (landscape: swap)."""
        return max((detr_resize_hw(self.crop_max, self.crop_min, s, self.max_size) for s in self.scales),
                   key=lambda hw: hw[0] * hw[1])

    def resized(self, h: int, w: int) -> set[tuple[int, int]]:
        """Every (h, w) the multi-scale branch gives a source image of h x w."""
        return {detr_resize_hw(h, w, s, self.max_size) for s in self.scales}


# Each release's train transform, read for these figures: DETR datasets/coco.py; Conditional DETR
# (Atten4Vis/ConditionalDETR) and Deformable DETR (fundamentalvision/Deformable-DETR) datasets/coco.py,
# Anchor DETR (megvii-research/AnchorDETR) datasets/coco.py, DINO (IDEA-Research/DINO)
# datasets/coco.py with config/DINO/DINO_4scale.py's data_aug_scales / data_aug_max_size: all the same.
DETR_AUGMENTATION = Augmentation()
FAMILY_AUGMENTATION = {f: DETR_AUGMENTATION for f in ("detr", "conditional_detr", "anchor_detr", "deformable_detr",
                                                      "dino")}


def augmentation_for(family: str | None) -> Augmentation:
    return FAMILY_AUGMENTATION.get(family or "detr", DETR_AUGMENTATION)


def _simplest_between(lo: Fraction, hi: Fraction, lo_in: bool, hi_in: bool) -> Fraction:
    """The fraction with the smallest denominator between lo and hi (each end included where its
    flag says), 0 <= lo < hi: the continued-fraction descent."""
    n = math.floor(lo)
    c = n if (lo_in and n == lo) else n + 1  # the smallest integer in the interval, if any
    if c < hi or (hi_in and c == hi):
        return Fraction(c)
    # no integer inside: x = n + 1/y, y = 1/(x - n) runs from 1/(hi - n) up to 1/(lo - n) (flags swap)
    y_lo = 1 / (hi - n)
    if lo == n:  # lo excluded (else c == n was returned): y unbounded, the smallest integer allowed
        y = Fraction(math.ceil(y_lo)) if hi_in else Fraction(math.floor(y_lo) + 1)
    else:
        y = _simplest_between(y_lo, 1 / (lo - n), hi_in, lo_in)
    return n + 1 / y


@dataclass(frozen=True)
class LongSide:
    """The longest side the augmentation gives, and a source image (h, w) that gets it."""

    long_side: int
    source_hw: tuple[int, int]
    max_aspect: Fraction


def _aspect(max_aspect) -> Fraction:
    a = Fraction(max_aspect).limit_denominator(10**6)
    if a < 1:
        raise ValueError(f"max_aspect must be >= 1 (long side / short side), got {max_aspect}")
    return a


def _clamped(aug: Augmentation, a_max: Fraction):
    """Per clamped short side k: (k, the largest long side int(k x r) over the ratios r <= a_max
    that clamp to k at the largest scale, a witness ratio r). round(m / r) == k for r between
    2m / (2k + 1) and 2m / (2k - 1), ends included when k is even (half to even); the long side is
    largest at the upper end, or just below it when that end is excluded."""
    m, s_max = aug.max_size, max(aug.scales)
    clamp_from = Fraction(m, s_max)  # r above this is clamped at the largest scale
    for k in range(max(1, math.floor(m / a_max - Fraction(1, 2))), s_max + 1):
        lower, upper = Fraction(2 * m, 2 * k + 1), Fraction(2 * m, 2 * k - 1)
        lo, lo_in = (lower, k % 2 == 0) if lower > clamp_from else (clamp_from, False)
        hi, hi_in = (upper, k % 2 == 0) if upper <= a_max else (a_max, True)
        if hi < lo or (hi == lo and not (lo_in and hi_in)):
            continue
        top = k * hi
        long_side = math.floor(top) if (hi_in or top.denominator != 1) else int(top) - 1
        target = Fraction(long_side, k)  # int(k r) == long_side for r in [target, hi)
        if target < lo or (target == lo and not lo_in):
            continue
        yield k, long_side, (target, hi, hi_in)


@functools.lru_cache(maxsize=32)
def max_long_side(aug: Augmentation = DETR_AUGMENTATION, max_aspect: Fraction | int | float = ASSUMED_MAX_ASPECT) -> LongSide:
    """The longest side any source image with long / short <= max_aspect can come out with, exactly
    (module docstring), with a witness source image (portrait: h is its long side).

    Unclamped draws (r x size <= max_size) give at most max_size. A clamped draw gives
    int(k x r), k = round(max_size / r) (`_clamped`). Each candidate is checked on its witness
    through detr_resize_hw, the float arithmetic the original runs."""
    a_max = _aspect(max_aspect)
    m, s_max = aug.max_size, max(aug.scales)
    r0 = min(a_max, Fraction(m, s_max))  # unclamped: the largest scale at the largest ratio it leaves unclamped
    best = LongSide(math.floor(s_max * r0), (r0.numerator, r0.denominator), a_max)
    for _k, long_side, (target, hi, hi_in) in _clamped(aug, a_max):
        if long_side <= best.long_side:
            continue
        r = _simplest_between(target, hi, True, hi_in)  # a witness ratio
        if max(detr_resize_hw(r.numerator, r.denominator, s_max, m)) == long_side:
            best = LongSide(long_side, (r.numerator, r.denominator), a_max)
    return best


@functools.lru_cache(maxsize=32)
def worst_single_image(aug: Augmentation = DETR_AUGMENTATION,
                       max_aspect: Fraction | int | float = ASSUMED_MAX_ASPECT) -> tuple[int, int]:
    """The largest single image by pixels the augmentation gives, as (short, long) = landscape
    (h, w); portrait is the same memory. Candidates: the largest scale unclamped (800 x 1333 at
    r = 1333 / 800), every clamped short side k with its longest side (`_clamped`), the crop
    branch's largest output."""
    a_max = _aspect(max_aspect)
    m, s_max = aug.max_size, max(aug.scales)
    r0 = min(a_max, Fraction(m, s_max))
    candidates = [(s_max, math.floor(s_max * r0)), tuple(sorted(aug.crop_branch_max_hw()))]
    candidates += [(k, long_side) for k, long_side, _ in _clamped(aug, a_max)]
    return max(candidates, key=lambda hw: (hw[0] * hw[1], hw[1]))


def worst_padded_batch(aug: Augmentation = DETR_AUGMENTATION,
                       max_aspect: Fraction | int | float = ASSUMED_MAX_ASPECT) -> tuple[int, int]:
    """The largest padded batch of two or more images: the longest side as both height (a
    portrait image) and width (a landscape one)."""
    long_side = max(max_long_side(aug, max_aspect).long_side, max(aug.crop_branch_max_hw()))
    return long_side, long_side


@dataclass(frozen=True)
class DatasetWorst:
    """What the augmentation makes of a dataset's source sizes (all exact)."""

    single_hw: tuple[int, int]  # the largest output image by pixels (as h, w)
    padded_hw: tuple[int, int]  # the largest height x the largest width of any outputs
    images: int
    distinct_sizes: int
    max_aspect: float  # of the source images


def worst_from_sizes(sizes: Iterable, aug: Augmentation = DETR_AUGMENTATION) -> DatasetWorst:
    """Exact worst sizes for source images given as (h, w) or ((h, w), count): every scale of the multi-scale branch,
    and the crop branch's largest outputs (both orientations: a tall crop comes from any image
    whose pre-resized sides reach crop_max, which the pre-resize guarantees)."""
    counts: dict[tuple[int, int], int] = {}
    for item in sizes:  # (h, w) or ((h, w), count)
        (h, w), n = (item if isinstance(item[0], tuple) else (item, 1))
        if h < 1 or w < 1:
            raise ValueError(f"image sizes must be positive, got {h} x {w}")
        counts[(int(h), int(w))] = counts.get((int(h), int(w)), 0) + n
    if not counts:
        raise ValueError("no image sizes given")
    ch, cw = aug.crop_branch_max_hw()
    outs = {(ch, cw), (cw, ch)}
    for h, w in counts:
        outs |= aug.resized(h, w)
    single = max(outs, key=lambda hw: (hw[0] * hw[1], max(hw)))
    return DatasetWorst(single_hw=(min(single), max(single)), padded_hw=(max(h for h, _ in outs), max(w for _, w in outs)),
                        images=sum(counts.values()), distinct_sizes=len(counts),
                        max_aspect=max(max(h, w) / min(h, w) for h, w in counts))


# Without a dataset: source images as (h, w), drawn uniformly. An ASSUMPTION for `plan --steps`,
# not a measurement: four landscape sizes (4:3 twice, 3:2, 16:9) and two portrait ones at 640 px on
# the long side, the long side COCO's images have; --sizes-from FILE gives a dataset's own.
ASSUMED_SOURCE_SIZES = ((480, 640), (480, 640), (427, 640), (360, 640), (640, 480), (640, 427))


def augmented_hw(rng, h: int, w: int, aug: Augmentation = DETR_AUGMENTATION) -> tuple[int, int]:
    """One draw of the train transform for a source image h x w (`rng`: random.Random), in the
    originals' order: RandomSelect(p = 0.5) between the multi-scale resize and pre-resize +
    RandomSizeCrop + multi-scale resize (the flip changes no size)."""
    if rng.random() < 0.5:
        return detr_resize_hw(h, w, rng.choice(aug.scales), aug.max_size)
    h1, w1 = detr_resize_hw(h, w, rng.choice(aug.pre_crop_sizes), None)
    cw = rng.randint(min(aug.crop_min, w1), min(w1, aug.crop_max))
    ch = rng.randint(min(aug.crop_min, h1), min(h1, aug.crop_max))
    return detr_resize_hw(ch, cw, rng.choice(aug.scales), aug.max_size)


def sample_padded_sizes(seed: int, batch: int, steps: int, sources=ASSUMED_SOURCE_SIZES,
                        aug: Augmentation = DETR_AUGMENTATION) -> list[tuple[int, int]]:
    """The padded (H, W) of `steps` batches of `batch` images drawn (with `seed`) from `sources`
    ((h, w) per source image, or ((h, w), count) pairs) through the train transform: the largest
    height and the largest width in each batch, as the originals' collate pads."""
    import random

    if batch < 1 or steps < 1:
        raise ValueError(f"batch and steps must be >= 1, got {batch}, {steps}")
    pairs = [s if isinstance(s[0], tuple) else (tuple(s), 1) for s in sources]
    sizes, weights = [p[0] for p in pairs], [p[1] for p in pairs]
    rng = random.Random(seed)
    out = []
    for _ in range(steps):
        hws = [augmented_hw(rng, *rng.choices(sizes, weights)[0], aug) for _ in range(batch)]
        out.append((max(h for h, _ in hws), max(w for _, w in hws)))
    return out


def coco_image_sizes(path) -> list[tuple[tuple[int, int], int]]:
    """((h, w), count) of the images a COCO annotation file lists ("images": [{"width", "height"},
    ...]); ValueError saying what is wrong otherwise."""
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        data = json.loads(p.read_text())
        counts: dict[tuple[int, int], int] = {}
        for im in data["images"]:
            hw = (int(im["height"]), int(im["width"]))
            if min(hw) < 1:
                raise ValueError(f"an image of {hw[0]} x {hw[1]} pixels")
            counts[hw] = counts.get(hw, 0) + 1
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a COCO annotation file (expected \"images\": [{{\"width\", \"height\"}}, ...]; "
                         f"{type(e).__name__}: {str(e)[:80]})") from None
    if not counts:
        raise ValueError(f"{path}: the COCO annotation file lists no images")
    return sorted(counts.items())
