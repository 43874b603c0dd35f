"""ENACT for Anchor DETR's encoder, as the ENACT release (Anchor-DETR-ENACT) does it.

Per encoder layer a `W_prob` (C -> 1) scores the row keys (features + row position embedding,
flattened row-major to S = H*W positions); the entropy/run procedure of docs/enact.md (steps 1-8)
picks one cluster size L for the batch and softmax window weights; the *same* windows and
weights pool the row keys, the column keys and the values into n = S // L tokens. RCDA then runs
over those tokens (`MultiheadRCDA.forward_enact`).

Module name `ENACT` and parameter `W_prob` follow the release, so its checkpoints load strictly.
The release's default sigma for Anchor DETR is 5.0 (3.0 for DETR and Conditional DETR): see
`anchor_detr.anchor_enact_config`.
"""
from __future__ import annotations

from torch import Tensor, nn

from enact import ops

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
        """key_row, key_col, value (N, S, C) -> pooled (N, n, C) each. `mask` is unused, as in
        the release (padded pixels take part in the entropy and the windows)."""
        s = key_row.shape[1]
        e = ops.smooth(ops.entropy_bits(self.W_prob(key_row).squeeze(-1)), self.config.sigma)   # (N, S)
        if self.config.cluster_size is not None:
            size = int(self.config.cluster_size)
            if size > s:
                raise ValueError(f"EnactConfig.cluster_size={size} exceeds the key length {s}")
        else:
            means = ops.mean_run_length(ops.step(ops.second_derivative(e)))                    # (N,)
            size = min(ops.cluster_size(means.tolist()), s)
        front, n = ops.trim_bounds(s, size)
        weights = e[:, front:front + n * size].reshape(-1, n, size).softmax(-1)               # (N, n, L)
        pooled = [pool_windows(x, weights, front) for x in (key_row, key_col, value)]
        self.last_stats = {"cluster_size": size, "key_len_before": s, "key_len_after": n}
        return pooled[0], pooled[1], pooled[2]


def pool_windows(x: Tensor, weights: Tensor, front: int) -> Tensor:
    """(N, S, C) -> (N, n, C): weighted sum over each window of `weights` (N, n, L) from `front`.

    Batch-first counterpart of enact.ops.window_pool (which takes (S, B, C) and recomputes the
    window softmax per tensor); here one softmax serves the row keys, column keys and values."""
    n, size = weights.shape[1:]
    kept = x[:, front:front + n * size].reshape(x.shape[0], n, size, x.shape[-1])   # (N, n, L, C)
    return (weights.unsqueeze(-1).to(x.dtype) * kept).sum(-2)
