"""EnactConfig: the options of ENACT attention, frozen and validated on construction."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

_CHOICES = {
    "cluster_scope": ("batch", "image"),
    "scale": ("reference", "standard"),
    "backend": ("math", "sdpa"),
}


@dataclass(frozen=True)
class EnactConfig:
    """How EnactAttention clusters keys/values and attends over them.

    sigma          standard deviation (in positions) of the Gaussian that smooths the entropy.
    cluster_scope  "batch": one cluster size L for the whole batch (the released code);
                   "image": one L per image, so an image's output does not depend on its batch.
    scale          "reference": softmax(Q K^T) / head_dim (the released code);
                   "standard": softmax(Q K^T / sqrt(head_dim)).
    mask_padding   padded positions (key_padding_mask True) take no part in the entropy, the run
                   statistics or any window (the released code ignores the mask).
    backend        "sdpa": torch's scaled_dot_product_attention (fused; the S x n weight matrix
                   is never stored); "math": explicit matmul + softmax. Same numbers.
    cluster_size   None: L from the data (one device->host sync per forward); an int: a fixed L
                   (static shapes: torch.compile, CUDA graphs, FakeTensorMode).

    The defaults are the released code's behaviour, computed with the fused backend; see
    `EnactConfig.reference()`.
    """

    sigma: float = 3.0
    cluster_scope: str = "batch"
    scale: str = "reference"
    mask_padding: bool = False
    backend: str = "sdpa"
    cluster_size: int | None = None

    def __post_init__(self):
        for field, allowed in _CHOICES.items():
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(
                    f"EnactConfig.{field} must be one of {', '.join(map(repr, allowed))}; got {value!r}"
                )
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)):
            raise ValueError(f"EnactConfig.sigma must be a positive number; got {self.sigma!r}")
        if not math.isfinite(self.sigma) or self.sigma <= 0:
            raise ValueError(f"EnactConfig.sigma must be a positive finite number; got {self.sigma!r}")
        if 3 * self.sigma - 1 < 0:
            raise ValueError(
                f"EnactConfig.sigma must be at least 1/3 (the Gaussian has taps -(3*sigma-1)..3*sigma-1); "
                f"got {self.sigma!r}"
            )
        if not isinstance(self.mask_padding, bool):
            raise ValueError(f"EnactConfig.mask_padding must be True or False; got {self.mask_padding!r}")
        if self.cluster_size is not None and (
            isinstance(self.cluster_size, bool) or not isinstance(self.cluster_size, int) or self.cluster_size < 1
        ):
            raise ValueError(
                f"EnactConfig.cluster_size must be None (from the data) or an int >= 1; got {self.cluster_size!r}"
            )

    @classmethod
    def reference(cls, sigma: float = 3.0) -> "EnactConfig":
        """The released DETR-ENACT code's behaviour (GSavathrakis/ENACT, ClustAttn).

        Same numbers as the released code; the attention runs through the fused kernel
        (softmax(QK^T)/d @ V == softmax(QK^T) @ V / d), which never stores the S x n weights.
        """
        return cls(sigma=sigma, cluster_scope="batch", scale="reference", mask_padding=False,
                   backend="sdpa", cluster_size=None)

    def replace(self, **changes) -> "EnactConfig":
        """A copy with some fields changed (validated again)."""
        return type(self)(**{**asdict(self), **changes})

    def to_dict(self) -> dict:
        return asdict(self)
