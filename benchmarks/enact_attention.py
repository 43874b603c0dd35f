"""Micro-benchmark of one encoder self-attention layer at DETR shapes (issue 2, item 7).

For forward (no autograd) and forward+backward (autograd, gradient of the output), at B=2 with a
25x34 map and B=8 with a 25x42 map (the C5 map of an 800x1333 image), C=256, 8 heads, inputs as
DETR passes them (q = k = src + pos, v = src, (S, B, C)):

  enact-ref        EnactAttention, EnactConfig.reference() (fused attention)
  enact-ref-math   the same with backend="math" (explicit softmax(QK^T)/d, the release's formulation)
  enact-std-sdpa   EnactAttention with scale="standard", backend="sdpa"
  mha-weights      nn.MultiheadAttention, need_weights=True (DETR's default)
  mha-noweights    nn.MultiheadAttention, need_weights=False
  released         the released ClustAttn, only with --reference-dir DETR-ENACT-folder

Time: median (and p10/p90) over --iters timed calls after --warmup, the variants interleaved
round-robin so that a shared machine's load falls on all of them alike; CUDA events on GPU,
perf_counter on CPU. Memory: CUDA max_memory_allocated on GPU; on CPU the peak of live tensor
bytes (enact_bench.instrument.live_tensors.LiveTensorTracker, not RSS). "own" is the peak of what the
call allocates (gradients included); "peak" adds what must be alive before it (inputs src and pos,
the layer's parameters), i.e. max_memory_allocated of a process holding only this layer. All ENACT variants (and the released code) share one state_dict, so they
cluster alike.

    PYTHONPATH=. python benchmarks/enact_attention.py [--threads 1] [--reference-dir .../ENACT/DETR-ENACT]
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from enact import EnactAttention, EnactConfig  # noqa: E402
from enact_bench.instrument.live_tensors import LiveTensorTracker  # noqa: E402

MIB = 2**20
SHAPES = [(2, 25, 34), (8, 25, 42)]  # (B, H, W)


def load_released(reference_dir: Path):
    """ClustAttn from the released DETR-ENACT folder (never part of this repository)."""
    path = reference_dir / "models" / "ENACT_attn" / "enact.py"
    if not path.exists():
        raise SystemExit(f"--reference-dir: expected the DETR-ENACT folder holding {path.relative_to(reference_dir)}; not found in {reference_dir}")
    spec = importlib.util.spec_from_file_location("released_enact", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ClustAttn


def build_variants(C, heads, device, released_cls, H, W):
    torch.manual_seed(0)
    ref = EnactAttention(C, heads, EnactConfig.reference()).to(device)
    sd = ref.state_dict()
    out = {"enact-ref": ref}
    for name, cfg in (("enact-ref-math", EnactConfig.reference().replace(backend="math")),
                      ("enact-std-sdpa", EnactConfig(scale="standard"))):
        m = EnactAttention(C, heads, cfg).to(device)
        m.load_state_dict(sd)
        out[name] = m
    mha = nn.MultiheadAttention(C, heads, dropout=0.0).to(device)
    out["mha-weights"] = mha
    out["mha-noweights"] = mha
    if released_cls is not None:
        rel = released_cls(3.0, C, 0.1, heads, str(device)).to(device)
        rel.load_state_dict(sd)
        out["released"] = rel
    calls = {}
    for name, m in out.items():
        if name == "mha-weights":
            calls[name] = lambda q, k, v, m=m: m(q, k, v)[0]  # need_weights=True: MHA's default
        elif name == "mha-noweights":
            calls[name] = lambda q, k, v, m=m: m(q, k, v, need_weights=False)[0]
        elif name == "released":
            calls[name] = lambda q, k, v, m=m: m(q, k, v, H, W)
        else:
            calls[name] = lambda q, k, v, m=m: m(q, k, v)[0]
    return out, calls


def run_once(call, src, pos, backward: bool):
    if backward:
        q = src + pos
        out = call(q, q, src)
        out.backward(torch.ones_like(out))
        return
    with torch.no_grad():
        q = src + pos
        call(q, q, src)


def timed(call, src, pos, backward, device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run_once(call, src, pos, backward)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    run_once(call, src, pos, backward)
    return (time.perf_counter() - t0) * 1e3


def peak(call, src, pos, backward, device, module) -> tuple[float, float]:
    """(peak MiB, own MiB) of one call. own: the peak of what the call allocates (gradients
    included; they are set to None before it). peak: own plus what must be alive before it (the
    inputs src and pos, the module's parameters), like max_memory_allocated in a process that
    holds only this layer."""
    module.zero_grad(set_to_none=True)
    src.grad = None
    resident = sum(t.numel() * t.element_size() for t in [src, pos, *module.parameters()])
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run_once(call, src, pos, backward)
        torch.cuda.synchronize()
        own = torch.cuda.max_memory_allocated() - before
    else:
        with LiveTensorTracker() as tracker:  # counts what is alive already, so own excludes it
            run_once(call, src, pos, backward)
        own = tracker.peak_bytes - tracker.start_bytes
    return (own + resident) / MIB, own / MIB


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reference-dir", type=Path, default=None,
                    help="the released DETR-ENACT folder, to add ClustAttn as a column (never committed)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads on CPU (0: torch's default); 1 is steadier on a shared machine")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    released_cls = load_released(args.reference_dir) if args.reference_dir else None
    C, heads = 256, 8
    rows = []
    load0 = os.getloadavg()
    for (B, H, W) in SHAPES:
        S = H * W
        torch.manual_seed(1)
        src = torch.randn(S, B, C, device=device, requires_grad=True)
        pos = torch.randn(S, B, C, device=device)
        modules, calls = build_variants(C, heads, device, released_cls, H, W)
        for backward in (False, True):
            mode = "fwd+bwd" if backward else "fwd"
            times = {name: [] for name in calls}
            for i in range(args.warmup + args.iters):
                for name, call in calls.items():  # interleaved: load spreads over all variants
                    t = timed(call, src, pos, backward, device)
                    if i >= args.warmup:
                        times[name].append(t)
            for name, call in calls.items():
                peak_mib, own_mib = peak(call, src, pos, backward, device, modules[name])
                ts = sorted(times[name])
                stats = getattr(modules[name], "last_stats", None) or {}
                rows.append({
                    "B": B, "map": f"{H}x{W}", "mode": mode, "variant": name,
                    "ms_p50": statistics.median(ts), "ms_p10": ts[len(ts) // 10], "ms_p90": ts[(len(ts) * 9) // 10],
                    "peak_mib": peak_mib, "own_mib": own_mib,
                    "keys": f"{S}->{stats['key_len_after']}" if "key_len_after" in stats else f"{S}",
                })
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "memory": "CUDA max_memory_allocated" if device.type == "cuda" else "peak live tensor bytes (LiveTensorTracker)",
        "loadavg_1min_start_end": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
        "iters": args.iters, "warmup": args.warmup,
    }
    print_table(rows, env, released_cls is not None)
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=1))


def print_table(rows, env, with_released):
    import pandas as pd

    df = pd.DataFrame(rows)
    if with_released:
        base = df[df.variant == "released"].set_index(["B", "map", "mode"])
        key = list(zip(df.B, df["map"], df["mode"]))
        df["speedup_vs_released"] = [base.loc[k, "ms_p50"] / v for k, v in zip(key, df.ms_p50)]
        df["peak_vs_released"] = [v / base.loc[k, "peak_mib"] for k, v in zip(key, df.peak_mib)]
        df["own_vs_released"] = [v / base.loc[k, "own_mib"] for k, v in zip(key, df.own_mib)]
    print(f"device: {env['device']} ({env['cpu_count']} CPUs, torch threads {env['torch_threads']}), "
          f"torch {env['torch']}; memory: {env['memory']}; {env['iters']} timed iterations after "
          f"{env['warmup']} warm-up; 1-min load average at start/end {env['loadavg_1min_start_end']}")
    print(df.to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main()
