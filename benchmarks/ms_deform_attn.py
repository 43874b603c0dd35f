"""Micro-benchmark of multi-scale deformable attention's core on CPU (issue 13, optional part).

Encoder shapes of Deformable DETR / DINO at a 400x667 image (levels 50x84, 25x42, 13x21, 7x11,
5,600 query tokens), batch 2, 8 heads of 32 channels, 4 points per level, float32:

  reference        ms_deform_attn_core (msda="pytorch"): grid_sample per level, stack, weighted sum
  op-copy          the op's first CPU forward: grid_sample per level on a (N*M, D, H, W) copy of
                   the level's value map, each level's weighted sum added into the output (no
                   stack), no autograd graph
  op               enact_bench::ms_deform_attn (msda="op") as it is now: the same, but each
                   image's level map is a strided view (M, D, H, W) of value (N, S, M, D)
                   (channels innermost), one grid_sample per image and level: no copy

forward = no-grad call; fwd+bwd = forward with autograd + backward of sum(out * g) (the op's
backward is its registered backward op). Median (p10, p90) over --iters timed calls after
--warmup, the variants interleaved round-robin so that a shared machine's load falls on all of
them alike. Each candidate is checked against the reference first (max abs diff printed).

    PYTHONPATH=. python benchmarks/ms_deform_attn.py [--threads 1] [--iters 7]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from enact_bench.detectors.common.ms_deform_attn import LevelShapes, ms_deform_attn_core  # noqa: E402
from enact_bench.detectors.common.ms_deform_attn_op import _grid_level, _weights_level, ms_deform_attn  # noqa: E402

SHAPES = [(50, 84), (25, 42), (13, 21), (7, 11)]


def op_copy_forward(value, shapes, loc, attn):
    """The op's first CPU forward: per level, grid_sample on a (N*M, D, H, W) copy."""
    n, _, m, d = value.shape
    lq = loc.shape[1]
    acc = value.new_zeros(n * m, d, lq)
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        # (N, HW, M, D) -> (N, HW, M*D) -> (N, M*D, HW) -> (N*M, D, H, W): a copy
        value_l = value[:, start:start + h * w].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        sampled = F.grid_sample(value_l, _grid_level(loc, lvl), mode="bilinear", padding_mode="zeros",
                                align_corners=False)
        acc += (sampled * _weights_level(attn, lvl)).sum(-1)
        start += h * w
    return acc.view(n, m * d, lq).transpose(1, 2).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n, m, d, p = 2, 8, 32, 4
    s = sum(h * w for h, w in SHAPES)
    lq = s
    value = torch.randn(n, s, m, d, generator=g)
    loc = torch.rand(n, lq, m, len(SHAPES), p, 2, generator=g) * 1.2 - 0.1
    attn = torch.rand(n, lq, m, len(SHAPES), p, generator=g).softmax(-1)
    ss, lsi = LevelShapes(SHAPES).tensors("cpu")
    grad = torch.randn(n, lq, m * d, generator=g)

    with torch.no_grad():
        ref = ms_deform_attn_core(value, SHAPES, loc, attn)
        out_op = ms_deform_attn(value, ss, lsi, loc, attn, 64)
        checks = {"op": (out_op - ref).abs().max().item(),
                  "op-copy": (op_copy_forward(value, SHAPES, loc, attn) - ref).abs().max().item(),
                  "op == op-copy bit for bit": bool(torch.equal(out_op, op_copy_forward(value, SHAPES, loc, attn)))}

    def fwd_bwd(core):
        def run():
            v, l, a = (t.detach().requires_grad_() for t in (value, loc, attn))
            (core(v, l, a) * grad).sum().backward()
        return run

    variants = {
        "reference forward": lambda: ms_deform_attn_core(value, SHAPES, loc, attn),
        "op forward": lambda: ms_deform_attn(value, ss, lsi, loc, attn, 64),
        "op-copy forward": lambda: op_copy_forward(value, SHAPES, loc, attn),
        "reference fwd+bwd": fwd_bwd(lambda v, l, a: ms_deform_attn_core(v, SHAPES, l, a)),
        "op fwd+bwd": fwd_bwd(lambda v, l, a: ms_deform_attn(v, ss, lsi, l, a, 64)),
    }
    times = {k: [] for k in variants}
    for _ in range(args.warmup):
        for name, fn in variants.items():
            with torch.no_grad() if "forward" in name else torch.enable_grad():
                fn()
    for _ in range(args.iters):
        for name, fn in variants.items():
            with torch.no_grad() if "forward" in name else torch.enable_grad():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    rows = {}
    for name, ts in times.items():
        ts = sorted(ts)
        q = statistics.quantiles(ts, n=10) if len(ts) >= 2 else [ts[0]] * 9
        rows[name] = {"median_ms": round(statistics.median(ts), 1), "p10_ms": round(q[0], 1),
                      "p90_ms": round(q[-1], 1)}
    print(json.dumps({"shapes": SHAPES, "batch": n, "heads": m, "channels": d, "points": p, "queries": lq,
                      "threads": args.threads, "iters": args.iters, "max_abs_diff_vs_reference": checks,
                      "times": rows}, indent=1))


if __name__ == "__main__":
    main()
