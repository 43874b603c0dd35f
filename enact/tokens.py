"""ENACT token clustering for encoders without dense self-attention (an extension beyond the
paper; docs/detectors-deformable.md).

*An extension beyond the ENACT paper*, which covers only encoders with dense self-attention
(DETR, Conditional DETR, Anchor DETR). Multi-scale deformable attention (Deformable DETR, DINO)
costs O(queries), not O(keys), so pooling keys saves nothing; here the *queries* are clustered.

Per encoder layer, `TokenClustering` does, for each feature level l separately (tokens of a level
are consecutive in the flattened sequence and row-major inside it):

1. p = softmax over the level's S_l positions of W_prob(src + pos), per image, + 1e-8;
   e = -p log2 p; e smoothed by the Gaussian of `config.sigma` (the same steps as the dense
   ENACT, docs/enact.md steps 1-3).
2. Cluster size L_l: `config.cluster_size` if set, else from the data: second derivative of the
   smoothed e, step = (d > 0), mean run length per image, L = round(mean over the batch)
   (docs/enact.md steps 4-6), clamped to [1, S_l].
3. r = S_l mod L_l; the first r // 2 and last r - r // 2 tokens stay single (clusters of one, so
   nothing is dropped); the n_l = S_l // L_l windows of L_l consecutive tokens in between become
   cluster tokens, each the weighted sum of its window with weights softmax(smoothed e) inside the
   window. The same weights pool the features (src), the positional embeddings (pos) and the
   reference points.
4. The encoder layer runs on the cluster tokens of all levels (queries) against the full-length,
   full-resolution value map (`layer_fn` closes over it).
5. Each original token gets its cluster's update (layer output minus the cluster token's input)
   added to its own input: out_t = src_t + (y_c - x_c). The sequence keeps its length S, so the
   decoder (and two-stage proposals) see every position.

With L = 1 everywhere the cluster tokens are the tokens themselves and the layer's result is the
baseline's (tests/enact/test_tokens.py checks this). W_prob learns through the window weights of
step 3 (L is an integer: no gradient flows through the run statistics).

The learned part is `TokenClustering.W_prob` (Linear(C, 1), Xavier-uniform weight, nn.Linear's
default bias, as the dense ENACT's W_prob): one per clustered encoder layer. In Deformable DETR
its state_dict key is `transformer.encoder.enact_clustering.<layer>.W_prob.{weight,bias}`.

Options of EnactConfig used here: sigma, cluster_size. cluster_scope="image" and
mask_padding=True are not implemented for token clustering and raise ValueError at construction
(the batch-scope, mask-ignoring behaviour is the released code's reference behaviour).

`last_stats` after each forward:
    cluster_size      [L_l per level]
    tokens_before     [S_l per level]
    tokens_after      [n_l + r_l per level]  (query tokens the layer ran on)
    query_len_before  sum(tokens_before)      query_len_after sum(tokens_after)
    key_len_before == key_len_after == sum(tokens_before)  (the value map is not shortened)
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from . import ops

LayerFn = Callable[[Tensor, Tensor | None, Tensor], Tensor]


def level_smoothed_entropy(logits: Tensor, sigma: float) -> Tensor:
    """(B, S_l) W_prob logits of one level -> (B, S_l) smoothed information (float32), docs/enact.md steps 1-3."""
    return ops.smooth(ops.entropy_bits(logits), sigma)


def level_cluster_size_from_data(smoothed: Tensor) -> int:
    """docs/enact.md steps 4-6: mean run length of (d > 0) per image, averaged over the batch, rounded.
    One device->host transfer."""
    steps = ops.step(ops.second_derivative(smoothed.detach()))
    return ops.cluster_size(ops.mean_run_length(steps).tolist())


class TokenClustering(nn.Module):
    """Cluster a deformable encoder layer's query tokens per level; see the module docstring.

    forward(layer_fn, src, pos, reference_points, spatial_shapes, padding_mask=None) -> (B, S, C)
      layer_fn(q_src (B, Q, C), q_pos (B, Q, C) or None, q_ref (B, Q, ...)) -> (B, Q, C): the encoder
        layer applied to Q query tokens against the full value map (bound by the caller).
      src, pos (B, S, C); reference_points (B, S, ...) (any trailing shape, e.g. (L, 2));
      spatial_shapes: list of (H_l, W_l) (or a (L, 2) tensor); padding_mask is not used (the
        reference behaviour ignores padding here).
    """

    def __init__(self, d_model: int, config=None):
        super().__init__()
        if config is None:
            from .config import EnactConfig

            config = EnactConfig()
        if getattr(config, "cluster_scope", "batch") != "batch":
            raise ValueError("token clustering supports cluster_scope='batch' only (one L per level for the "
                             f"whole batch); got {config.cluster_scope!r}")
        if getattr(config, "mask_padding", False):
            raise ValueError("token clustering does not implement mask_padding=True; use mask_padding=False "
                             "(the reference behaviour: padded tokens are clustered like the others)")
        self.config = config
        self.W_prob = nn.Linear(d_model, 1)
        nn.init.xavier_uniform_(self.W_prob.weight)
        self.last_stats: dict | None = None

    def level_cluster_size(self, smoothed: Tensor) -> int:
        n = smoothed.shape[1]
        size = self.config.cluster_size if self.config.cluster_size is not None else level_cluster_size_from_data(smoothed)
        return max(1, min(int(size), n))

    def forward(self, layer_fn: LayerFn, src: Tensor, pos: Tensor | None, reference_points: Tensor,
                spatial_shapes, padding_mask: Tensor | None = None) -> Tensor:
        shapes = _shapes_as_list(spatial_shapes)
        bsz, seq, chans = src.shape
        if sum(h * w for h, w in shapes) != seq:
            raise ValueError(f"src has {seq} tokens but spatial_shapes {shapes} sum to {sum(h * w for h, w in shapes)}")
        key = src if pos is None else src + pos
        logits = self.W_prob(key).squeeze(-1)  # (B, S)

        q_src, q_pos, q_ref, plans = [], [], [], []
        start = 0
        for h, w in shapes:
            n_tok = h * w
            sl = slice(start, start + n_tok)
            smoothed = level_smoothed_entropy(logits[:, sl], self.config.sigma)  # (B, S_l)
            size = self.level_cluster_size(smoothed)
            front, n_win = ops.trim_bounds(n_tok, size)
            rest = n_tok - n_win * size
            stop = start + front + n_win * size  # windows cover [start + front, stop)
            plans.append((start, front, n_win, size, rest, n_tok))

            for tensor, out in ((src, q_src), (pos, q_pos), (reference_points, q_ref)):
                if tensor is None:
                    continue
                level = tensor[:, sl]
                # (B, S_l, ...) -> (S_l, B, D) view for ops.window_pool -> (n, B, D) -> (B, n, ...)
                seq_first = level.reshape(bsz, n_tok, -1).transpose(0, 1)
                pooled = ops.window_pool(seq_first, smoothed, size, front, n_win).transpose(0, 1)
                pooled = pooled.reshape(bsz, n_win, *tensor.shape[2:])
                out.extend([tensor[:, start:start + front], pooled, tensor[:, stop:start + n_tok]])
            start += n_tok

        q_src_t = torch.cat(q_src, 1)  # (B, Q, C)
        q_pos_t = torch.cat(q_pos, 1) if pos is not None else None
        q_ref_t = torch.cat(q_ref, 1)
        update = layer_fn(q_src_t, q_pos_t, q_ref_t) - q_src_t  # (B, Q, C)

        # broadcast each cluster's update back to its tokens, level by level, in sequence order
        pieces, q = [], 0
        for start, front, n_win, size, rest, n_tok in plans:
            back = rest - front
            u_front = update[:, q:q + front]
            u_win = update[:, q + front:q + front + n_win]  # (B, n, C)
            u_back = update[:, q + front + n_win:q + front + n_win + back]
            # (B, n, C) -> (B, n, L, C) -> (B, n*L, C)
            u_win = u_win[:, :, None, :].expand(bsz, n_win, size, chans).reshape(bsz, n_win * size, chans)
            pieces.extend([u_front, u_win, u_back])
            q += front + n_win + back
        out = src + torch.cat(pieces, 1)  # (B, S, C)

        before = [n_tok for *_, n_tok in plans]
        after = [n_win + rest for _, _, n_win, _, rest, _ in plans]
        self.last_stats = {
            "cluster_size": [size for _, _, _, size, _, _ in plans],
            "tokens_before": before,
            "tokens_after": after,
            "query_len_before": sum(before),
            "query_len_after": sum(after),
            "key_len_before": sum(before),
            "key_len_after": sum(before),
        }
        return out


def _shapes_as_list(spatial_shapes) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]
