"""Peak memory and step time per detector setting, baseline next to each ENACT variant.

Horizontal grouped bars (long setting names stay readable), one panel per run and device. A case
that ran out of memory or failed has no bar: its status is written where the bar would start.
ENACT bars carry their change against the baseline of the same setting. A `fake = true` case (a
FakeTensorMode estimate of a full-size step, nothing measured) is drawn in the memory plot with its
estimate, hatched and labelled as one, and left out of the time plot (it is not timed). The legend
names only what has a bar.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib import transforms
from matplotlib.patches import Patch

from .figures import (FAIL_COLOR, Plot, facets, log_axis, plain_ticks, memory_axis_label, new_figure, save,
                      setting_label, variant_colors, wants_log)
from enact_bench.summary import within_noise

from .labels import STATUS_TEXT, is_missing

BAR_IN = 0.2   # inches per bar
ESTIMATE_HATCH = "////"
# a fake case's estimate that stands in for the facet's memory reading (first one recorded)
ESTIMATE_FOR = {"mem_peak_alloc_mib": ("predicted_alloc_peak_mib", "fake_tracked_peak_mib"),
                "mem_peak_reserved_mib": ("predicted_reserved_peak_mib", "fake_tracked_peak_mib")}
ESTIMATE_DEFAULT = ("fake_tracked_peak_mib",)


def is_fake(rec) -> bool:
    v = rec.get("fake")
    return bool(v) and not is_missing(v)


def _settings(g):
    keys, seen = [], set()
    order = g.sort_values(["mode", "detector", "batch_size", "image_pixels", "data"],
                          key=lambda s: s.map({"train": 0, "infer": 1}) if s.name == "mode" else s,
                          na_position="first", kind="stable")
    for rec in order.to_dict("records"):
        k = rec["setting_json"]
        if k not in seen:
            seen.add(k)
            keys.append((k, rec))
    return keys


def _value(rec, metric):
    if rec["status"] != "ok":
        return None
    v = rec.get(metric)
    return None if is_missing(v) else float(v)


def _value_or_estimate(rec, metric, estimates: bool) -> tuple[float | None, bool]:
    """(value, is_estimate): the measured reading, else (for a fake case, with `estimates`) the
    estimate that stands in for it."""
    v = _value(rec, metric)
    if v is not None or not estimates or not is_fake(rec):
        return v, False
    for m in ESTIMATE_FOR.get(metric, ESTIMATE_DEFAULT):
        e = _value(rec, m)
        if e is not None:
            return e, True
    return None, False


def _whiskers(rec):
    """(below, above) the median: the quartiles when recorded, else IQR/2 each side."""
    p50 = rec.get("step_ms_p50")
    p25, p75 = rec.get("step_ms_p25"), rec.get("step_ms_p75")
    if not is_missing(p25) and not is_missing(p75):
        return p50 - p25, p75 - p50
    iqr = rec.get("step_ms_iqr")
    return (0.0, 0.0) if is_missing(iqr) else (iqr / 2, iqr / 2)


def _bar_panel(ax, facet, metric, colors, xlabel, errors: bool, estimates: bool = False):
    settings = _settings(facet.df)
    variants = [v for v in colors if v in set(facet.df["variant"])]
    groups = []
    for key, _ in settings:
        group = facet.df[facet.df["setting_json"] == key]
        groups.append({r["variant"]: r for r in group.to_dict("records")})
    h = 0.8 / max(len(g) for g in groups)   # same bar width everywhere; groups centred on their tick
    vals, drawn, any_estimate = [], set(), False
    for i, recs in enumerate(groups):
        base = recs.get("baseline")
        base_v = _value_or_estimate(base, metric, estimates)[0] if base else None
        present = [v for v in variants if v in recs]
        for j, v in enumerate(present):
            rec = recs[v]
            y = i + h * (j - (len(present) - 1) / 2)
            val, estimated = _value_or_estimate(rec, metric, estimates)
            if val is None:
                msg = STATUS_TEXT.get(rec["status"], rec["status"]) if rec["status"] != "ok" else "not measured"
                ax.text(0.005, y, f" {msg}", transform=transforms.blended_transform_factory(ax.transAxes, ax.transData),
                        va="center", ha="left", fontsize=7.5, color=FAIL_COLOR, fontstyle="italic")
                continue
            vals.append(val)
            drawn.add(v)
            any_estimate |= estimated
            xerr = None
            if errors and not estimated:
                lo, hi = _whiskers(rec)
                xerr = [[lo], [hi]]
            ax.barh(y, val, height=h * 0.92, color=colors[v], xerr=xerr,
                    hatch=ESTIMATE_HATCH if estimated else None, edgecolor="white" if estimated else None,
                    error_kw={"elinewidth": 0.9, "capsize": 2, "ecolor": "#222222"})
            note = None
            if v != "baseline" and base is not None:
                noise = within_noise(base, rec) if errors else False  # time: a difference inside the spread
                if base_v is not None and noise is True:
                    note = "~ (noise)"
                elif base_v is not None and noise is None:
                    note = None   # under 3 timed steps: no spread to tell a change from noise
                elif base_v is not None:
                    note = f"{(val - base_v) / base_v * 100:+.0f}%".replace("-", "−")
                elif base["status"] != "ok":
                    note = f"baseline {STATUS_TEXT.get(base['status'], base['status'])}"
            if estimated:
                note = f"{note} (estimate)" if note else "estimate"
            if note:
                right = val + (xerr[1][0] if xerr else 0.0)
                ax.annotate(note, (right, y), xytext=(3, 0), textcoords="offset points",
                            va="center", ha="left", fontsize=7, color="#222222")
    ax.set_yticks(range(len(settings)), [setting_label(r) for _, r in settings], fontsize=7.5)
    ax.set_ylim(len(settings) - 0.5, -0.5)
    if vals:
        if wants_log(vals):
            log_axis(ax, "x")
            ax.set_xlim(min(vals) / 1.6, max(vals) * 2.5)
            xlabel += ", log scale"
        else:
            ax.set_xlim(0, max(vals) * 1.22)
            plain_ticks(ax, "x")
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(facet.title, fontsize=9.5)
    handles = [Patch(color=colors[v], label=v) for v in variants if v in drawn]
    if any_estimate:
        handles.append(Patch(facecolor="#bbbbbb", edgecolor="white", hatch=ESTIMATE_HATCH,
                             label="estimate (fake tensors)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5,
              frameon=False)


def _bars(df, out_dir: Path, name: str, what: str, metric_of, xlabel_of, errors: bool, caption: str,
          estimates: bool = False):
    fs = facets(df)
    if not fs:
        return None
    colors = variant_colors(df)
    heights = []
    for f in fs:
        n_set = len(_settings(f.df))
        n_var = f.df.groupby("setting_json").size().max()
        heights.append(max(1.6, n_set * (n_var * BAR_IN + 0.12) + 0.9))
    fig = new_figure(10.5, sum(heights) + 0.4)
    axes = fig.subplots(len(fs), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, f in zip(axes, fs):
        _bar_panel(ax, f, metric_of(f), colors, xlabel_of(f), errors, estimates)
    fig.suptitle(what, fontsize=11, fontweight="bold")
    return save(fig, out_dir, name, caption)


def memory_bars(df, out_dir: Path) -> Plot | None:
    return _bars(df, out_dir, "memory_per_detector", "Peak memory per detector setting: baseline vs ENACT",
                 lambda f: f.memory_metric, lambda f: "peak " + memory_axis_label(f.memory_metric).removeprefix("peak "),
                 errors=False, estimates=True,
                 caption="Peak memory of each detector setting, baseline and ENACT variants side by side; "
                         "the label after an ENACT bar is its change against the baseline. CUDA runs show "
                         "torch's peak allocated bytes, CPU runs the exact peak of live tensor bytes. Hatched "
                         "bars are estimates (fake = true cases: one training step on fake tensors), not "
                         "measurements.")


def time_bars(df, out_dir: Path) -> Plot | None:
    has_q = {"step_ms_p25", "step_ms_p75"} <= set(df.columns) and df["step_ms_p25"].notna().any()
    whisk = "the interquartile range (p25 to p75)" if has_q else \
        "the interquartile range, drawn as median ± IQR/2 (the records hold the IQR, not p25/p75)"
    if "fake" in df.columns:   # estimates are not timed: no bar, no "not measured" either
        df = df[~df["fake"].map(lambda v: bool(v) and not is_missing(v))]
    if df.empty:
        return None
    return _bars(df, out_dir, "step_time_per_detector", "Step time per detector setting: baseline vs ENACT",
                 lambda f: "step_ms_p50", lambda f: "step time, median (ms)", errors=True,
                 caption=f"Median step time (train: forward + loss + backward + AdamW step; infer: forward); "
                         f"whiskers show {whisk}. The label after an ENACT bar is its change against the "
                         f"baseline, or ~ when the two cases' p10-p90 spreads of step times overlap (a "
                         f"difference within the noise).")

