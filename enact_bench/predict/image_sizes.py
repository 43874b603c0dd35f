"""Which image size a plan's fake step runs at, per batch size: `ImageSizes`.

"run-worst" (the default of `enact-bench plan`): the largest padded batch the family's training
augmentation can form at each batch size (data/augmentation_sizes.py): batch 1 the largest single
image (800 x 1333), batch 2 and more the longest side as height and width (1337 x 1337 for
source images no more elongated than 10:1, the assumption; the sizes of a COCO annotation file
when one is given). The typical 800 x 1333 batch is planned beside it.
"fixed" (`--image-size HxW`): that size at every batch size.
"""
from __future__ import annotations

from dataclasses import dataclass

from enact_bench.errors import UserInputError
from enact_bench.sizes import MIN_PLAN_SIDE_PX, split_hw

POLICIES = ("run-worst", "fixed")
MIN_SIDE = 32  # the backbone's stride: a smaller side has no feature map


def _check_hw(hw, what: str) -> tuple[int, int]:
    if not (isinstance(hw, tuple) and len(hw) == 2 and all(isinstance(x, int) for x in hw)):
        raise ValueError(f"ImageSizes.{what} must be an (H, W) tuple of ints, got {hw!r}")
    if min(hw) < MIN_SIDE:
        raise UserInputError(f"image size {hw[0]}x{hw[1]}: both sides must be >= {MIN_SIDE} pixels (the backbone's stride)")
    return hw


@dataclass(frozen=True)
class ImageSizes:
    """The padded (H, W) of a plan's batches: `hw(batch)`."""

    policy: str  # "run-worst" | "fixed"
    padded_hw: tuple[int, int]  # batches of 2 or more
    single_hw: tuple[int, int]  # batch 1
    typical_hw: tuple[int, int] | None = None  # run-worst: the typical batch planned beside it
    basis: str = ""  # how the sizes were found (the assumption, or the dataset)

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"ImageSizes.policy must be one of {POLICIES}, got {self.policy!r}")
        _check_hw(self.padded_hw, "padded_hw")
        _check_hw(self.single_hw, "single_hw")
        if self.typical_hw is not None:
            _check_hw(self.typical_hw, "typical_hw")
        if self.policy == "fixed" and (self.single_hw != self.padded_hw or self.typical_hw is not None):
            raise ValueError("a fixed ImageSizes has one size for every batch and no typical batch beside it")

    def hw(self, batch: int) -> tuple[int, int]:
        return self.single_hw if batch == 1 else self.padded_hw

    @classmethod
    def fixed(cls, hw: tuple[int, int]) -> "ImageSizes":
        hw = tuple(int(x) for x in hw)
        return cls("fixed", hw, hw, None, f"fixed: {hw[0]}x{hw[1]} at every batch size")

    @classmethod
    def run_worst(cls, family: str | None, sizes=None, sizes_label: str = "") -> "ImageSizes":
        """The family's augmentation's worst padded batch per batch size; `sizes`: the source
        images' (h, w) (a COCO file's), else the labelled aspect-ratio assumption."""
        from enact_bench.data.augmentation_sizes import (ASSUMED_MAX_ASPECT, TYPICAL_HW, augmentation_for,
                                                         max_long_side, worst_from_sizes, worst_padded_batch,
                                                         worst_single_image)

        aug = augmentation_for(family)
        if sizes is not None:
            d = worst_from_sizes(sizes, aug)
            return cls("run-worst", d.padded_hw, d.single_hw, TYPICAL_HW,
                       f"the augmentation's largest outputs over {d.images:,} source images ({d.distinct_sizes:,} "
                       f"sizes, aspect ratio up to {d.max_aspect:.2f}){' of ' + sizes_label if sizes_label else ''}")
        side = max_long_side(aug, ASSUMED_MAX_ASPECT)
        return cls("run-worst", worst_padded_batch(aug, ASSUMED_MAX_ASPECT), worst_single_image(aug, ASSUMED_MAX_ASPECT),
                   TYPICAL_HW, f"ASSUMED source aspect ratios up to {float(ASSUMED_MAX_ASPECT):g}:1 (the resize's "
                               f"rounding takes the long side to {side.long_side}; --sizes-from FILE for a dataset's own)")

    def label(self) -> str:
        """For titles: 'run-worst (batch 1: 800x1333, batch >= 2: 1337x1337)' or 'fixed 800x1333'."""
        if self.policy == "fixed":
            return f"fixed {self.padded_hw[0]}x{self.padded_hw[1]}"
        (h1, w1), (h, w) = self.single_hw, self.padded_hw
        return f"run-worst (batch 1: {h1}x{w1}, batch >= 2: {h}x{w})"

    def as_dict(self) -> dict:
        return {"image_size_policy": self.policy, "image_size": list(self.padded_hw),
                "image_size_batch1": list(self.single_hw),
                "typical_image_size": list(self.typical_hw) if self.typical_hw else None,
                "image_size_basis": self.basis}


def parse_image_size(text: str, family: str | None, sizes=None, sizes_label: str = "") -> ImageSizes:
    """--image-size: "run-worst" (or "worst") -> ImageSizes.run_worst; "HxW" -> fixed."""
    t = str(text).strip().lower()
    if t in ("run-worst", "worst"):
        return ImageSizes.run_worst(family, sizes, sizes_label)
    hw = split_hw(t)
    if hw is None:
        raise UserInputError(f"--image-size {text!r}: expected HxW (e.g. 800x1333) or 'run-worst'")
    if min(hw) < MIN_PLAN_SIDE_PX:
        raise UserInputError(f"--image-size {text!r}: both sides must be >= {MIN_PLAN_SIDE_PX} pixels "
                             "(the backbone's stride)")
    return ImageSizes.fixed(hw)
