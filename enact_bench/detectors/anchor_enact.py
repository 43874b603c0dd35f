"""ENACT for Anchor DETR's encoder, as the ENACT release (Anchor-DETR-ENACT) does it.

Per encoder layer a `W_prob` (C -> 1) scores the row keys (features + row position embedding,
flattened row-major to S = H*W positions); the entropy/run procedure of DESIGN 4.1 (steps 1-8)
picks one cluster size L for the batch and softmax window weights; the *same* windows and
weights pool the row keys, the column keys and the values into n = S // L tokens. RCDA then runs
over those tokens (`MultiheadRCDA.forward_enact`).

Module name `ENACT` and parameter `W_prob` follow the release, so its checkpoints load strictly.
The release's default sigma for Anchor DETR is 5.0 (3.0 for DETR and Conditional DETR): see
`anchor_detr.anchor_enact_config`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ANCHOR_SIGMA = 5.0  # the release's --smoothing_sigma default for Anchor DETR


class AnchorEnactPooling(nn.Module):
    """(row keys, column keys, values), each (N, S, C) -> pooled (N, n, C) each, same windows."""

    def __init__(self, d_model: int, config):
        super().__init__()
        if config.cluster_scope != "batch" or config.mask_padding:
            raise ValueError(
                "Anchor DETR's ENACT supports cluster_scope='batch' and mask_padding=False only "
                f"(got cluster_scope={config.cluster_scope!r}, mask_padding={config.mask_padding}); "
                "its RCDA over pooled tokens has no key mask"
            )
        self.config = config
        self.W_prob = nn.Linear(d_model, 1)
        nn.init.xavier_uniform_(self.W_prob.weight)
        self.last_stats: dict = {}

    def forward(self, key_row: Tensor, key_col: Tensor, value: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        s = key_row.shape[1]
        info = information(self.W_prob(key_row).squeeze(-1))              # (N, S)
        smooth = gaussian_smooth(info, self.config.sigma)                  # (N, S)
        if self.config.cluster_size is not None:
            size = int(self.config.cluster_size)
        else:
            size = batch_cluster_size(smooth)
        weights, start, n = window_weights(smooth, size)                   # (N, n, L)
        pooled = [pool_windows(x, weights, start) for x in (key_row, key_col, value)]
        self.last_stats = {"cluster_size": size, "key_len_before": s, "key_len_after": n}
        return pooled[0], pooled[1], pooled[2]


# -- the steps of DESIGN 4.1 (local until enact.ops provides them) -------------------------------
def information(scores: Tensor) -> Tensor:
    """(N, S) scores -> per-position information -p log2 p of p = softmax(scores) + 1e-8."""
    p = scores.softmax(-1) + 1e-8
    return -p * torch.log(p) / math.log(2.0)


def gaussian_smooth(x: Tensor, sigma: float) -> Tensor:
    """1-D Gaussian over the sequence: taps -(3 sigma - 1) .. (3 sigma - 1), not renormalised,
    zero padding, same length. (N, S) -> (N, S)."""
    taps = torch.arange(-(3 * sigma - 1), 3 * sigma, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-taps**2 / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    return F.conv1d(x.unsqueeze(1), kernel.view(1, 1, -1), padding="same").squeeze(1)


def batch_cluster_size(smooth: Tensor) -> int:
    """Python-rounded batch mean of the per-image mean run length of (d > 0), d = [-1, 2, -1] * smooth."""
    kernel = torch.tensor([-1.0, 2.0, -1.0], dtype=smooth.dtype, device=smooth.device).view(1, 1, 3)
    step = F.conv1d(smooth.unsqueeze(1), kernel, padding="same").squeeze(1) > 0        # (N, S)
    runs = 1 + (step[:, 1:] != step[:, :-1]).sum(1)                                      # (N,)
    means = (step.shape[1] / runs.double()).tolist()
    return round(sum(means) / len(means))


def window_weights(smooth: Tensor, size: int) -> tuple[Tensor, int, int]:
    """Centre-trimmed windows of `size` positions: softmax of the smoothed information inside
    each. Returns weights (N, n, size), the first kept position and n."""
    s = smooth.shape[1]
    size = max(1, min(size, s))
    n, r = divmod(s, size)
    start = r // 2
    kept = smooth[:, start:start + n * size]
    return kept.reshape(-1, n, size).softmax(-1), start, n


def pool_windows(x: Tensor, weights: Tensor, start: int) -> Tensor:
    """(N, S, C) -> (N, n, C): the weighted sum over each window."""
    n, size = weights.shape[1:]
    kept = x[:, start:start + n * size].reshape(x.shape[0], n, size, x.shape[-1])      # (N, n, L, C)
    return (weights.unsqueeze(-1) * kept).sum(-2)
