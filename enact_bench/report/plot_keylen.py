"""Encoder key length per layer for the ENACT cases: keys left after clustering (solid, markers)
and the full sequence length (dotted, same colour). Dense-attention detectors and deformable ones
(token clustering, an extension beyond the paper) get separate panels; one row per run.
Settings with identical per-layer lengths (e.g. a batch sweep at one image size) share a line;
a different line that coincides with an earlier one is dashed with hollow, larger markers."""
from __future__ import annotations

from pathlib import Path

from matplotlib.lines import Line2D

from .figures import PALETTE, Plot, log_axis, plain_ticks, new_figure, save, wants_log
from .labels import DEFORMABLE_ENACT, DEFORMABLE_FAMILIES
from .load import layer_values

COLORS = PALETTE + ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")
PANELS = (("dense", "ENACT: encoder self-attention keys per layer"),
          ("deformable", f"{DEFORMABLE_ENACT}:\nencoder tokens per layer"))


def _lines(g) -> dict[str, list[tuple[str, list[float], list[float]]]]:
    """{'dense'|'deformable': [(label, before, after)]}, identical curves merged."""
    merged: dict[tuple, dict] = {}
    for rec in g.to_dict("records"):
        if not rec["enact"] or rec["status"] != "ok":
            continue
        kind = "deformable" if rec["family"] in DEFORMABLE_FAMILIES else "dense"
        field = "enact_query_len" if kind == "deformable" and layer_values(rec.get("enact_query_len_after")) \
            else "enact_key_len"  # token clustering shortens the queries, not the keys
        after = layer_values(rec.get(f"{field}_after"))
        if not after:
            continue
        before = layer_values(rec.get(f"{field}_before")) or [float("nan")] * len(after)
        base = DEFORMABLE_ENACT if kind == "deformable" else "ENACT"
        extra = rec["variant"].removeprefix(base).strip(" ()")
        name = rec["detector"] + (f" [{extra}]" if extra else "")
        key = (kind, name, tuple(before), tuple(after))
        merged.setdefault(key, []).append(f"{rec['mode']} {str(rec['image_size']).replace('x', '×')}")
    out: dict[str, list] = {"dense": [], "deformable": []}
    for (kind, name, before, after), sizes in merged.items():
        label = f"{name} · {', '.join(dict.fromkeys(sizes))}" + (f" ({len(sizes)} cases)" if len(sizes) > 1 else "")
        out[kind].append((label, list(before), list(after)))
    return out


def keylen_plot(df, out_dir: Path) -> Plot | None:
    rows = []
    for run in sorted(df["run"].unique()):
        g = df[df["run"] == run]
        lines = _lines(g)
        kinds = [k for k, _ in PANELS if lines[k]]
        if kinds:
            rows.append((g, lines, kinds))
    if not rows:
        return None
    ncol = max(len(k) for _, _, k in rows)
    n_leg = max(len(lines[k]) for _, lines, kinds in rows for k in kinds)
    fig = new_figure(6.4 * ncol, (4.2 + 0.17 * (n_leg + 2) / 2) * len(rows) + 0.4)
    subs = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
    for (g, lines, kinds), sub in zip(rows, subs):
        r = g.iloc[0]
        sub.suptitle(f"suite '{r['suite']}', {r['run_label']}", fontsize=9.5)
        axes = sub.subplots(1, ncol, squeeze=False)[0]
        for ax, kind in zip(axes, kinds):
            vals = []
            seen: dict[tuple, int] = {}
            for i, (label, before, after) in enumerate(lines[kind]):
                color = COLORS[i % len(COLORS)]
                layers = list(range(1, len(after) + 1))
                dup = seen.get(tuple(after), 0)   # same curve as an earlier line: ring it, dash it
                seen[tuple(after)] = dup + 1
                ax.plot(layers, after, color=color, marker="o", linewidth=1.6, label=label,
                        markersize=5 + 3.5 * dup, linestyle="--" if dup else "-",
                        markerfacecolor="none" if dup else color, markeredgewidth=1.4, zorder=3 - 0.1 * dup)
                ax.plot(layers, before, color=color, linestyle=":", linewidth=1.2)
                vals += [v for v in after + before if v == v]
            ax.set_xticks(range(1, max(len(a) for _, _, a in lines[kind]) + 1))
            ylabel = "key length (tokens)" if kind == "dense" else "encoder tokens (all levels)"
            if wants_log(vals):
                log_axis(ax, "y")
                ylabel += ", log scale"
            else:
                ax.set_ylim(0, max(vals) * 1.1)
                plain_ticks(ax, "y")
            ax.set_xlabel("ENACT encoder layer (in encoder order)")
            ax.set_ylabel(ylabel)
            ax.set_title(dict(PANELS)[kind], fontsize=9)
            ax.grid(alpha=0.3)
            handles, labels = ax.get_legend_handles_labels()
            handles.append(Line2D([], [], color="#555555", linestyle=":", label="without clustering"))
            ax.legend(handles=handles, fontsize=7, frameon=False, loc="upper center",
                      bbox_to_anchor=(0.5, -0.16), ncol=2)
        for ax in axes[len(kinds):]:
            ax.set_visible(False)
    fig.suptitle("Encoder key length per layer with ENACT", fontsize=11, fontweight="bold")
    return save(fig, out_dir, "key_length_per_layer",
                "Keys (dense encoders) or tokens (deformable encoders, token clustering: an extension "
                "beyond the paper) left per encoder layer after ENACT's clustering (solid), and the "
                "sequence length without it (dotted, same colour). Settings with the same lengths share "
                "a line.")
