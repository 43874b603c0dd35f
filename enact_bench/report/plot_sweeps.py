"""Memory and step time against image size and against batch size, when a run sweeps them.

A line is a set of records equal in every case field except the swept one (and its variant);
it is drawn when it has at least two distinct values of the swept field. Colour: the setting
(detector, ...); line style: baseline solid, ENACT dashed, other variants dotted. A case that ran
out of memory is an "x" at the top of the panel, above its size.
"""
from __future__ import annotations

import json
from pathlib import Path

from matplotlib import transforms
from matplotlib.lines import Line2D

from .figures import (BASELINE_COLOR, FAIL_COLOR, PALETTE, Plot, facets, log_axis, plain_ticks,
                      memory_axis_label, new_figure, save, wants_log)
from .labels import STATUS_TEXT, is_missing

SWEEPS = {
    "image_size": {"x": "image_pixels", "exclude": ("image_size", "image_h", "image_w", "image_pixels"),
                   "case_keys": ("image_size", "image_size_dist"),
                   "xlabel": "image size H×W (log scale of pixels per image)", "what": "image size"},
    "batch_size": {"x": "batch_size", "exclude": ("batch_size",), "case_keys": ("batch_size",),
                   "xlabel": "batch size (images per step)", "what": "batch size"},
}
LINE_KEYS = ("detector", "mode", "dtype", "batch_size", "image_size", "data", "attention", "variant")
STYLES = ("--", ":", "-.")


def _lines(g, sweep: str) -> list[tuple[dict, list[dict]]]:
    spec = SWEEPS[sweep]
    label_keys = [k for k in LINE_KEYS if k not in spec["exclude"]]
    groups: dict[tuple, list[dict]] = {}
    for rec in g.to_dict("records"):
        if is_missing(rec.get(spec["x"])):
            continue
        rest = {k: v for k, v in json.loads(rec["setting_json"]).items() if k not in spec["case_keys"]}
        key = (json.dumps(rest, sort_keys=True), rec["variant"], str(rec.get("attention")))
        groups.setdefault(key, []).append(rec)
    out = []
    for recs in groups.values():
        if len({r[spec["x"]] for r in recs}) >= 2:
            out.append(({k: recs[0].get(k) for k in label_keys}, sorted(recs, key=lambda r: r[spec["x"]])))
    return out


def _line_label(key: dict, varying: list[str]) -> str:
    parts = [str(key["detector"])] + [f"{k.replace('_size', '')} {key[k]}" if k == "batch_size" else str(key[k])
                                      for k in varying]
    return " · ".join(parts + [str(key["variant"])])


def _panel(ax, lines, colors, sweep, metric, ylabel, title):
    spec = SWEEPS[sweep]
    vals, xs, fails = [], {}, []
    for key, recs in lines:
        setting = colors[key["_setting"]]
        style = "-" if key["variant"] == "baseline" else key["_style"]
        ok = [r for r in recs if r["status"] == "ok" and not is_missing(r.get(metric))]
        x = [r[spec["x"]] for r in ok]
        y = [float(r[metric]) for r in ok]
        yerr = None
        if metric == "step_ms_p50":
            yerr = [[(r.get("step_ms_iqr") or 0) / 2 for r in ok]] * 2
        ax.errorbar(x, y, yerr=yerr, color=setting, linestyle=style, marker="o", markersize=4,
                    linewidth=1.6, capsize=2, elinewidth=0.8)
        vals += y
        for r in recs:
            xs[r[spec["x"]]] = r.get("image_size") if sweep == "image_size" else str(r["batch_size"])
            if r["status"] != "ok":
                fails.append((r[spec["x"]], setting, STATUS_TEXT.get(r["status"], r["status"])))
    top = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for x, color, status in fails:
        ax.plot([x], [0.95], transform=top, marker="x", color=color, markersize=8, mew=2)
        ax.annotate(status, (x, 0.95), xycoords=top, xytext=(0, -11), textcoords="offset points",
                    ha="center", fontsize=7, color=FAIL_COLOR)
    if sweep == "image_size":
        log_axis(ax, "x")
    elif max(xs) / max(min(xs), 1) >= 4:
        ax.set_xscale("log", base=2)
    ticks = sorted(xs)
    ax.set_xticks(ticks, [str(xs[t]).replace("x", "×") for t in ticks],
                  rotation=30 if sweep == "image_size" else 0, fontsize=7.5)
    ax.minorticks_off()
    room = 1.35 if fails else 1.15   # failed cases sit above the data, not on it
    if wants_log(vals):
        log_axis(ax, "y")
        ylabel += ", log scale"
        ax.set_ylim(min(vals) / 1.3, max(vals) * room ** 2)
    else:
        ax.set_ylim(0, max(vals) * room if vals else 1)
        plain_ticks(ax, "y")
    ax.set_xlabel(spec["xlabel"] if sweep == "image_size" or ax.get_xscale() == "linear"
                  else spec["xlabel"] + ", log scale")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def sweep_plot(df, out_dir: Path, sweep: str) -> Plot | None:
    rows = [(f, _lines(f.df, sweep)) for f in facets(df)]
    rows = [(f, lines) for f, lines in rows if lines]
    if not rows:
        return None
    spec = SWEEPS[sweep]
    fig = new_figure(12.5, 4.1 * len(rows) + 0.5)
    subs = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
    for (f, lines), sub in zip(rows, subs):
        ax_m, ax_t = sub.subplots(1, 2)
        sub.suptitle(f.title, fontsize=9.5)
        varying = [k for k in ("mode", "batch_size", "image_size", "data", "dtype", "attention")
                   if k not in spec["exclude"] and len({str(key.get(k)) for key, _ in lines}) > 1]
        settings, variants = [], []
        for key, _ in lines:
            key["_setting"] = _line_label(dict(key, variant=""), varying).rstrip(" ·")
            if key["_setting"] not in settings:
                settings.append(key["_setting"])
            if key["variant"] != "baseline" and key["variant"] not in variants:
                variants.append(key["variant"])
            if key["variant"] != "baseline":
                key["_style"] = STYLES[variants.index(key["variant"]) % len(STYLES)]
        colors = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(settings)}
        _panel(ax_m, lines, colors, sweep, f.memory_metric, "peak " + memory_axis_label(f.memory_metric).removeprefix("peak "),
               f"peak memory vs {spec['what']}")
        _panel(ax_t, lines, colors, sweep, "step_ms_p50", "step time, median (ms)",
               f"step time vs {spec['what']}")
        handles = [Line2D([], [], color=colors[s], linewidth=3, label=s) for s in settings]
        handles.append(Line2D([], [], color=BASELINE_COLOR, linestyle="-", label="baseline"))
        handles += [Line2D([], [], color=BASELINE_COLOR, linestyle=STYLES[i % len(STYLES)], label=v)
                    for i, v in enumerate(variants)]
        if any(r["status"] != "ok" for _, recs in lines for r in recs):
            handles.append(Line2D([], [], color="#222222", marker="x", linestyle="none", mew=2,
                                  label="out of memory / failed (no reading)"))
        ax_t.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7.5,
                    frameon=False)
    fig.suptitle(f"Peak memory and step time against {spec['what']}", fontsize=11, fontweight="bold")
    name = f"sweep_{sweep}"
    return save(fig, out_dir, name,
                f"Peak memory (left) and median step time with ± IQR/2 whiskers (right) against "
                f"{spec['what']}; colour = detector setting, line style = baseline or ENACT variant.")
