"""COCO AP against peak memory, with the Pareto front (no other case has both less memory and
more AP) marked. Drawn only when some case has COCO stats."""
from __future__ import annotations

from pathlib import Path

from matplotlib.lines import Line2D

from .figures import PALETTE, Plot, facets, log_axis, memory_axis_label, new_figure, save, wants_log

MARKERS = ("o", "^", "s", "D", "v", "P", "X")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when less memory (x) and more AP (y) are better:
    no other point has x <= and y >= with one strictly. Sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _has_ap(df) -> bool:
    return "coco_map" in df.columns and bool((df["status"].eq("ok") & df["coco_map"].notna()).any())


def tradeoff_plot(df, out_dir: Path) -> Plot | None:
    if not _has_ap(df):
        return None
    fs = [f for f in facets(df) if _has_ap(f.df)]
    fig = new_figure(6.2 * len(fs) + 3.0, 4.6)
    axes = fig.subplots(1, len(fs), squeeze=False)[0]
    detectors = sorted({d for f in fs for d in f.df.loc[f.df["coco_map"].notna(), "detector"]})
    colors = {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(detectors)}
    variants = sorted({v for f in fs for v in f.df.loc[f.df["coco_map"].notna(), "variant"]},
                      key=lambda v: (v != "baseline", len(v), v))
    markers = {v: MARKERS[i % len(MARKERS)] for i, v in enumerate(variants)}
    for ax, f in zip(axes, fs):
        g = f.df[f.df["status"].eq("ok") & f.df["coco_map"].notna() & f.df[f.memory_metric].notna()]
        pts = list(zip(g[f.memory_metric].astype(float), g["coco_map"].astype(float)))
        for (x, y), rec in zip(pts, g.to_dict("records")):
            ax.scatter([x], [y], s=46, color=colors[rec["detector"]], marker=markers[rec["variant"]],
                       edgecolor="black", linewidth=0.5, zorder=3)
        front = pareto_front(pts)
        fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
        ax.step(fx, fy, where="post", color="black", linewidth=1.2, alpha=0.6, zorder=2)
        ax.scatter(fx, fy, s=150, facecolor="none", edgecolor="black", linewidth=1.0, zorder=4)
        label = "peak " + memory_axis_label(f.memory_metric).removeprefix("peak ")
        xs = [p[0] for p in pts]
        if wants_log(xs):
            log_axis(ax, "x")
            label += ", log scale"
        ax.margins(x=0.12, y=0.15)
        ax.set_xlabel(label)
        ax.set_ylabel("COCO box AP (%)")
        ax.set_title(f.title, fontsize=9)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[d], marker="o", linestyle="none", markersize=7, label=d)
               for d in detectors]
    handles += [Line2D([], [], color="#888888", marker=markers[v], linestyle="none", markersize=7,
                       label=v) for v in variants]
    handles.append(Line2D([], [], color="black", marker="o", markerfacecolor="none", markersize=10,
                          alpha=0.7, label="Pareto front (less memory, more AP)"))
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7.5,
                    frameon=False)
    fig.suptitle("COCO AP against peak memory", fontsize=11, fontweight="bold")
    return save(fig, out_dir, "ap_vs_memory",
                "COCO box AP against the peak memory of the same case; circled points joined by the "
                "step line form the Pareto front: no other case reaches more AP with less memory. "
                "Colour = detector, marker = baseline or ENACT variant.")
