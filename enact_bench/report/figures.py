"""What every plot shares: facets (one per run and device), colours, log-scale rule, saving.

Uses matplotlib's object API (`Figure` + Agg canvas), never pyplot, so nothing global changes and
no display is needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from .labels import (DEVICE_MEMORY, MEMORY_PREFERENCE, METRICS, device_rank, device_title,
                     device_type, is_missing)

BASELINE_COLOR = "#6b6b6b"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#d62728")
LOG_SPAN = 20.0        # use a log axis when the largest value is this many times the smallest
FAIL_COLOR = "#c0392b"


@dataclass(frozen=True)
class Facet:
    run: int
    device: str
    df: pd.DataFrame
    title: str          # "suite 'smoke' on NVIDIA H100 (run #1)"
    memory_metric: str  # the memory reading used for this device


@dataclass(frozen=True)
class Plot:
    name: str
    png: Path
    svg: Path
    caption: str


def facets(df: pd.DataFrame) -> list[Facet]:
    several = df["run"].nunique() > 1
    keys = sorted({(r, d) for r, d in zip(df["run"], df["device"])},
                  key=lambda k: (k[0], device_rank(k[1])))
    out = []
    for run, device in keys:
        g = df[(df["run"] == run) & (df["device"] == device)]
        r = g.iloc[0]
        name = device_title(r.get("env_device_name"), device, r.get("env_device_kind"), r.get("env_host"))
        title = f"suite '{r['suite']}' on {name}" + (f" (run #{run})" if several else "")
        out.append(Facet(run, device, g, title, memory_metric(g, device)))
    return out


def memory_metric(g: pd.DataFrame, device: str) -> str:
    """The first memory reading (MEMORY_PREFERENCE, the device's own first) measured in `g`."""
    first = DEVICE_MEMORY.get(device_type(device))
    for m in ((first,) if first else ()) + MEMORY_PREFERENCE:
        if m in g.columns and g[m].notna().any():
            return m
    return first or "mem_peak_alloc_mib"


def memory_axis_label(metric: str) -> str:
    return f"{METRICS[metric][0]} memory ({METRICS[metric][1]})"


def variant_colors(df: pd.DataFrame) -> dict[str, str]:
    variants = sorted({v for v in df["variant"] if v != "baseline"}, key=lambda v: (len(v), v))
    colors = {"baseline": BASELINE_COLOR}
    colors.update({v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)})
    return colors


def wants_log(values) -> bool:
    vals = [float(v) for v in values if not is_missing(v) and float(v) > 0]
    return bool(vals) and max(vals) / min(vals) > LOG_SPAN


def _plain(v, _pos=None) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:g}"


def log_axis(ax, which: str = "x") -> None:
    """Log scale with readable ticks (1, 2, 5 per decade, plain numbers, not 10^k)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(_plain))
    axis.set_minor_formatter(NullFormatter())


def plain_ticks(ax, which: str = "y") -> None:
    """Linear axis ticks as plain numbers with thousands separators (17,500, not 17500)."""
    from matplotlib.ticker import FuncFormatter
    (ax.xaxis if which == "x" else ax.yaxis).set_major_formatter(FuncFormatter(_plain))


def setting_label(rec: dict, with_detector: bool = True) -> str:
    parts = [rec["mode"], f"b{rec['batch_size']}", str(rec["image_size"]).replace("x", "×")]
    if rec.get("data") not in (None, "synthetic"):
        parts.append(str(rec["data"]))
    tail = " · ".join(parts)
    return f"{rec['detector']}\n{tail}" if with_detector else tail


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig


def save(fig: Figure, out_dir: Path, name: str, caption: str) -> Plot:
    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
    # tight: nothing drawn outside the figure (long titles, outside legends) is cut off
    fig.savefig(png, dpi=110, bbox_inches="tight", pad_inches=0.15, metadata={"Software": None})
    fig.set_layout_engine("none")   # positions are settled: do not lay the figure out again
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "enact-bench"}):
        # text stays text (smaller, searchable); fixed ids so a rebuilt SVG is byte-identical
        fig.savefig(svg, bbox_inches="tight", pad_inches=0.15, metadata={"Date": None, "Creator": None})
    return Plot(name, png, svg, caption)
