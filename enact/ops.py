"""Pure tensor functions of ENACT (docs/enact.md, steps 1-8): entropy, smoothing, boundaries, cluster size, pooling.

Everything is batched: no Python loop over images or heads. Statistics are float32 whatever the
input dtype. Sequences are (B, S) for per-position scalars and (S, B, C) for features, as DETR
passes them. Where a sequence has a valid length per image (`valid_len`), its valid positions are
the prefix [0, valid_len) and everything after is ignored.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-8  # added to the probabilities before the logarithm, as the released code does


def gaussian_taps(sigma: float, device: torch.device | str | None = None) -> Tensor:
    """The released code's smoothing kernel: taps at x = -(3 sigma - 1) ... < 3 sigma, step 1,
    weight exp(-x^2 / (2 sigma^2)) / (sigma sqrt(2 pi)), not renormalised. (K,) float32.

    Built with the release's float32 operations (on the CPU: equal to the bit), on `device`
    directly with no host->device copy, so it can be captured in a CUDA graph or traced.
    Non-integer sigma gives half-integer taps and possibly an even count."""
    x = torch.arange(-(3 * sigma - 1), 3 * sigma, dtype=torch.float32, device=device)
    two_pi = torch.full((1,), 2 * math.pi, dtype=torch.float32, device=device)
    sig = torch.full((1,), float(sigma), dtype=torch.float32, device=device)
    return (1.0 / (sigma * torch.sqrt(two_pi))) * torch.exp(-torch.pow(x, 2) / (2 * torch.pow(sig, 2)))


def _conv_same(x: Tensor, taps: Tensor) -> Tensor:
    """1-D correlation of each row of x (B, S) with taps (K,), zero padding, output (B, S).

    For an even K the extra zero goes on the right, like conv1d(padding='same')."""
    k = taps.numel()
    left = (k - 1) // 2
    x = F.pad(x.unsqueeze(1), (left, k - 1 - left))  # (B, S) -> (B, 1, S + K - 1)
    return F.conv1d(x, taps.view(1, 1, k)).squeeze(1)


def entropy_bits(logits: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-position information -p log2 p of p = softmax over the sequence of `logits` (B, S).

    `valid` (B, S) bool: positions outside it take no part in the softmax and get 0.
    Returns (B, S) float32."""
    logits = logits.float()
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    p = F.softmax(logits, dim=-1) + EPS
    ln2 = torch.log(torch.full((1,), 2.0, dtype=torch.float32, device=p.device))
    e = -p * torch.log(p) / ln2
    if valid is not None:
        e = e.masked_fill(~valid, 0.0)
    return e


def smooth(e: Tensor, sigma: float) -> Tensor:
    """Gaussian smoothing of each row of e (B, S) with `gaussian_taps(sigma)`, zero padding."""
    return _conv_same(e, gaussian_taps(sigma, e.device).to(e.dtype))


def second_derivative(x: Tensor) -> Tensor:
    """Correlation of each row of x (B, S) with [-1, 2, -1], zero padding, length S."""
    i = torch.arange(3, dtype=x.dtype, device=x.device)
    return _conv_same(x, 2.0 - 3.0 * (i - 1.0).abs())  # taps [-1, 2, -1]


def step(d: Tensor) -> Tensor:
    """(d > 0): exact zeros count as 0. Bool (B, S)."""
    return d > 0


def run_count(steps: Tensor, valid_len: Tensor | None = None) -> Tensor:
    """Number of runs of equal consecutive values in each row of `steps` (B, S), counted inside
    [0, valid_len) when given. int64 (B,)."""
    change = steps[:, 1:] != steps[:, :-1]  # (B, S - 1): change between i - 1 and i
    if valid_len is not None:
        pos = torch.arange(1, steps.shape[1], device=steps.device)
        change = change & (pos.unsqueeze(0) < valid_len.unsqueeze(1))
    return change.sum(dim=1) + 1


def mean_run_length(steps: Tensor, valid_len: Tensor | None = None) -> Tensor:
    """Mean length of the runs of each row, = length / number of runs, in float32 (the released
    code takes the float32 mean of the int64 run lengths, whose sum is the length). (B,)."""
    runs = run_count(steps, valid_len).to(torch.float32)
    if valid_len is None:
        length = torch.full_like(runs, float(steps.shape[1]))
    else:
        length = valid_len.to(torch.float32)
    return length / runs


def cluster_size(means: list[float]) -> int:
    """L = round(mean of the per-image mean run lengths): float64 mean, Python round (half to
    even), like the released code's round(np.mean(means)). Host-side: `means` came over in the
    forward's one device->host transfer. The float32 means sum exactly in float64."""
    return max(1, round(sum(means) / len(means)))


def trim_bounds(length: int, size: int) -> tuple[int, int]:
    """(front, n): drop the first r // 2 positions (r = length mod size), keep n = length // size
    windows; the last r - r // 2 positions are dropped too."""
    r = length % size
    return r // 2, length // size


def window_pool(x: Tensor, e: Tensor, size: int, front: int, n: int) -> Tensor:
    """Pool n windows of `size` consecutive positions of x (S, B, C), starting at `front`, each
    weighted by the softmax of the smoothed entropy e (B, S) inside it. Returns (n, B, C).

    The weights are float32; the product with x follows type promotion (float32 for half input),
    and the result has x's dtype. No copy of x is made or saved for backward beyond the window
    product, which the sum frees."""
    stop = front + n * size
    w = F.softmax(e[:, front:stop].reshape(e.shape[0], n, size), dim=-1)  # (B, n, L)
    w = w.permute(1, 2, 0).unsqueeze(-1)  # (B, n, L) -> (n, L, B, 1)
    xw = x[front:stop].reshape(n, size, x.shape[1], x.shape[2])  # (S', B, C) -> (n, L, B, C)
    return (w * xw).sum(dim=1).to(x.dtype)  # (n, B, C)


def window_index(front: Tensor, size: Tensor, n: Tensor, n_max: int, size_max: int):
    """Per-image windows of different sizes, as a dense (B, n_max, size_max) grid.

    front, size, n: (B,) int64. Returns (index, member, window): `index` (B, n_max, size_max)
    positions front + j * size + i (0 where unused, so only valid positions are ever read), `member` (B, n_max, size_max) bool: i < size and j < n,
    `window` (B, n_max) bool: j < n."""
    j = torch.arange(n_max, device=front.device).view(1, -1, 1)
    i = torch.arange(size_max, device=front.device).view(1, 1, -1)
    front, size, n = (t.view(-1, 1, 1) for t in (front, size, n))
    window = j < n  # (B, n_max, 1)
    member = (i < size) & window
    index = torch.where(member, front + j * size + i, 0)  # (B, n_max, size_max); unused -> 0
    return index, member, window.squeeze(-1)


def window_pool_gather(x: Tensor, e: Tensor, index: Tensor, member: Tensor, order: Tensor | None) -> Tensor:
    """Pool windows given by `index` (B, n, L) into the (possibly compacted) sequence.

    x (S, B, C) in original order; e (B, S) in the compacted order; `order` (B, S): original
    position of each compacted position (None: identity). Members outside `member` get weight 0.
    Windows with no member get their first position's value (their keys are masked later).
    Returns (n, B, C) in x's dtype."""
    B, n, L = index.shape
    flat = index.reshape(B, n * L)  # (B, n*L)
    logits = e.gather(1, flat).view(B, n, L)
    first = torch.arange(L, device=e.device).view(1, 1, L) == 0
    logits = logits.masked_fill(~(member | first), float("-inf"))
    w = F.softmax(logits, dim=-1)  # (B, n, L); empty windows: all weight on member 0
    pos = flat if order is None else order.gather(1, flat)  # original positions, (B, n*L)
    C = x.shape[2]
    xg = x.gather(0, pos.t().unsqueeze(-1).expand(n * L, B, C))  # (n*L, B, C)
    xg = xg.view(n, L, B, C)
    w = w.permute(1, 2, 0).unsqueeze(-1)  # (B, n, L) -> (n, L, B, 1)
    return (w * xg).sum(dim=1).to(x.dtype)  # (n, B, C)
