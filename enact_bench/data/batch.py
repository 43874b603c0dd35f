"""The one batch type: what every source, the fake step and the validation hand a training or
inference step.

images: a list of normalised (3, H_i, W_i) float tensors (the detector pads them itself, as the
harness feeds them), or a padded (B, 3, H, W) tensor with its (B, H, W) bool `mask` (True =
padding); targets: DETR-style dicts (`labels` int64 (n,), `boxes` float (n, 4) normalised
cxcywh); sizes: (B, 2) int64 of (h, w), the frame post-processing returns absolute boxes in
(inference; None where nothing is post-processed); image_ids: COCO ids where the source has them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Batch:
    images: Any  # list[Tensor (3, H_i, W_i)] | Tensor (B, 3, H, W)
    targets: list
    mask: Any = None  # Tensor (B, H, W) bool with a padded `images` tensor, else None
    sizes: Any = None  # Tensor (B, 2) int64 (h, w)
    image_ids: list | None = None

    def to(self, device) -> "Batch":
        """The batch on `device` (images without blocking; the caller synchronises)."""
        images = ([im.to(device, non_blocking=True) for im in self.images] if isinstance(self.images, list)
                  else self.images.to(device, non_blocking=True))
        return Batch(
            images=images,
            targets=[{k: (v.to(device) if hasattr(v, "to") else v) for k, v in t.items()} for t in self.targets],
            mask=None if self.mask is None else self.mask.to(device),
            sizes=None if self.sizes is None else self.sizes.to(device),
            image_ids=self.image_ids,
        )

    def tensors(self) -> list:
        """Every tensor the batch holds (what a memory step counts in as its inputs)."""
        import torch

        images = list(self.images) if isinstance(self.images, list) else [self.images]
        extra = [t for t in (self.mask, self.sizes) if t is not None]
        return images + extra + [v for t in self.targets for v in t.values() if isinstance(v, torch.Tensor)]


def make_batch(batch_size: int, image_size: tuple[int, int], num_targets: int = 6,
               num_classes: int = 91, seed: int = 0, padded: bool = False) -> Batch:
    """The measured steps' synthetic batch, deterministic: `batch_size` images of `image_size`,
    each with `num_targets` objects (under FakeTensorMode too: then only shapes matter).

    Boxes are valid normalised cxcywh strictly inside the image; every image has `num_targets`.
    padded=False gives a list of images (the harness's convention, and the original DETR's: the
    list and the model's padded copy are both alive); True a padded tensor + mask (one copy).
    """
    if batch_size < 1 or num_targets < 1:
        raise ValueError(f"batch_size and num_targets must be >= 1, got {batch_size}, {num_targets}")
    import torch

    h, w = image_size
    g = torch.Generator().manual_seed(seed) if not _fake_mode_active() else None
    if padded:
        images = torch.randn(batch_size, 3, h, w, generator=g)
        mask = torch.zeros(batch_size, h, w, dtype=torch.bool)  # all images full size: no padding
    else:
        images, mask = [torch.randn(3, h, w, generator=g) for _ in range(batch_size)], None
    targets = []
    for _ in range(batch_size):
        centre = 0.25 + 0.5 * torch.rand(num_targets, 2, generator=g)
        size = 0.05 + 0.4 * torch.rand(num_targets, 2, generator=g)
        labels = torch.randint(0, num_classes, (num_targets,), generator=g)
        targets.append({"labels": labels, "boxes": torch.cat([centre, size], dim=1)})  # (n, 4)
    return Batch(images=images, targets=targets, mask=mask)


def _fake_mode_active() -> bool:
    from torch._guards import detect_fake_mode
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    return any(isinstance(m, FakeTensorMode) for m in _get_current_dispatch_mode_stack()) or detect_fake_mode() is not None
