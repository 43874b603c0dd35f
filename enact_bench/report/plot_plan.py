"""`enact-bench plan --plot FILE`: the plan's answer as a picture, from its JSON (no torch).

One GPU: predicted device memory against the batch size, one colour per variant (solid: the
run's worst padded batch; dashed: the typical batch), the GPU's budget as a line, the largest
batch of each marked (filled: run-worst; open: typical). Several GPUs (`--gpu all`): the largest
batch per GPU and variant as bars (run-worst), the typical batch's as open markers above them.
Every figure is labelled as an estimate. PNG or SVG by the file's suffix.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

from .figures import PALETTE, new_figure, plain_ticks

SUFFIXES = (".png", ".svg")


def _points(v: dict, which: str) -> list[tuple[int, float]]:
    """(batch, device MiB) of a variant's rows and curve, run-worst or typical, sorted."""
    pts = {}
    rows = v.get("rows", []) if which == "worst" else (v.get("typical") or {}).get("rows", [])
    for r in rows:
        pts[r["batch_size"]] = r["device_used_mib"]
    for c in v.get("curve", []):
        key = "device_used_mib" if which == "worst" else "typical_device_used_mib"
        if c.get(key) is not None:
            pts[c["batch_size"]] = c[key]
    return sorted(pts.items())


def _memory_figure(plan: dict):
    fig = new_figure(8.0, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    typical = plan.get("typical_image_size")
    for i, v in enumerate(x for x in plan["variants"] if x.get("applicable", True) and x.get("rows")):
        color = PALETTE[i % len(PALETTE)]
        worst = _points(v, "worst")
        label = v["variant"] + (" (run-worst)" if typical else "")
        ax.plot([b for b, _ in worst], [m for _, m in worst], "-", color=color, label=label, linewidth=1.6)
        rows = {r["batch_size"]: r for r in v["rows"]}
        top = rows.get(v.get("max_batch_size"))
        if top is not None:
            ax.plot([top["batch_size"]], [top["device_used_mib"]], "o", color=color, markersize=7)
            ax.annotate(str(top["batch_size"]), (top["batch_size"], top["device_used_mib"]), textcoords="offset points",
                        xytext=(-4, 6), ha="right", fontsize=8, color=color)
        if typical and v.get("typical"):
            pts = _points(v, "typical")
            ax.plot([b for b, _ in pts], [m for _, m in pts], "--", color=color, linewidth=1.2,
                    label=f"{v['variant']} (typical {typical[0]}x{typical[1]})")
            trows = {r["batch_size"]: r for r in v["typical"].get("rows", [])}
            ttop = trows.get(v["typical"].get("max_batch_size"))
            if ttop is not None:
                ax.plot([ttop["batch_size"]], [ttop["device_used_mib"]], "o", markerfacecolor="white", color=color,
                        markersize=7)
                ax.annotate(str(ttop["batch_size"]), (ttop["batch_size"], ttop["device_used_mib"]),
                            textcoords="offset points", xytext=(4, -12), fontsize=8, color=color)
    ax.axhline(plan["budget_mib"], color="#c0392b", linewidth=1.0, linestyle=":")
    ax.annotate(f"budget {plan['budget_mib']:,.0f} MiB ({100 - plan['margin_pct']:g}% of {plan['usable_mib']:,} usable)",
                (0.01, plan["budget_mib"]), xycoords=("axes fraction", "data"), textcoords="offset points",
                xytext=(0, 4), fontsize=8, color="#c0392b")
    ax.set_xlabel("batch size (images per GPU)")
    ax.set_ylabel("predicted device memory (MiB)")
    plain_ticks(ax, "y")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    policy = plan.get("image_size_policy", "fixed")
    h, w = plan["image_size"]
    ax.set_title(f"ESTIMATE: {plan['detector']} on {plan['gpu']['name']}, {plan['dtype']}, one AdamW training step, "
                 f"image size {policy} ({h}x{w} at batch >= 2); fake tensors + caching-allocator model, "
                 f"CUDA context estimated", fontsize=9, loc="left", wrap=True)
    return fig


def _gpu_figure(plans: list[dict]):
    gpus = [p["gpu"]["name"] for p in plans]
    variants = [v["variant"] for v in plans[0]["variants"]]
    fig = new_figure(max(8.0, 0.9 * len(gpus) * max(1, len(variants)) / 2), 4.8)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(variants))
    for i, name in enumerate(variants):
        color = PALETTE[i % len(PALETTE)]
        xs, worst, typ = [], [], []
        for g, p in enumerate(plans):
            v = next(x for x in p["variants"] if x["variant"] == name)
            if not v.get("applicable", True) or v.get("max_batch_size") is None:
                continue
            xs.append(g + (i - (len(variants) - 1) / 2) * width)
            worst.append(v["max_batch_size"])
            typ.append(v.get("typical_max_batch_size"))
        if not xs:
            continue
        ax.bar(xs, worst, width * 0.95, color=color, label=f"{name} (run-worst)")
        tx = [x for x, t in zip(xs, typ) if t is not None]
        if tx:
            ax.plot(tx, [t for t in typ if t is not None], "o", markerfacecolor="white", color=color, markersize=5,
                    label=f"{name} (typical)")
    ax.set_xticks(range(len(gpus)), gpus, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("largest batch that fits (images per GPU)")
    ax.grid(True, axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to show where batch sizes were given (no largest batch)
        ax.legend(fontsize=7, ncols=2)
    p0 = plans[0]
    ax.set_title(f"ESTIMATE: {p0['detector']}, the largest training batch per GPU, {p0['dtype']}, margin "
                 f"{p0['margin_pct']:g}%, image size {p0.get('image_size_policy', 'fixed')}; fake tensors + "
                 f"caching-allocator model, CUDA context estimated per GPU", fontsize=9, loc="left", wrap=True)
    return fig


def plan_figure(plans: list[dict], path: str | Path) -> Path:
    """Draw the plans (one detector: one per GPU) to `path` (.png or .svg)."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: the plot is written as PNG or SVG (a .png or .svg file name)")
    fig = _gpu_figure(plans) if len(plans) > 1 else _memory_figure(plans[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".svg":
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "enact-bench"}):
            fig.savefig(path, bbox_inches="tight", pad_inches=0.15, metadata={"Date": None, "Creator": None})
    else:
        fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15, metadata={"Software": None})
    return path
