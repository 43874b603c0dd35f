"""build_report(run_dirs, out_dir): records -> CSV files, plots (PNG + SVG), report.md, report.html."""
from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd

from . import tables
from .figures import Plot
from .labels import DEFORMABLE_ENACT, DEVICE_MEMORY, METRICS, STATUS_TEXT, device_type
from .load import load_records, records_path
from .plot_bars import memory_bars, time_bars
from .plot_keylen import keylen_plot
from .plot_sweeps import sweep_plot
from .plot_tradeoff import tradeoff_plot
from .render import Bullets, Figure, Heading, Para, Table, write


def default_out_dir(run_dirs) -> Path:
    """One run: <run>/report. Several: <parent of the first>/report-<run>-vs-<run>..."""
    runs = [records_path(r).parent for r in run_dirs]
    if len(runs) == 1:
        return runs[0] / "report"
    return runs[0].parent / ("report-" + "-vs-".join(r.name for r in runs))[:120]


def _plots(df, out_dir: Path) -> list[Plot]:
    made = [memory_bars(df, out_dir), time_bars(df, out_dir), sweep_plot(df, out_dir, "image_size"),
            sweep_plot(df, out_dir, "batch_size"), tradeoff_plot(df, out_dir), keylen_plot(df, out_dir)]
    return [p for p in made if p is not None]


def _pct(v: float) -> str:
    return f"{v:+.1f} %".replace("-", "−")


def _summary(p: pd.DataFrame, section: dict) -> list[str]:
    """Plain sentences for one (run, device) section: median change of memory and time over the
    pairs where both sides ran, and the settings that fit only with ENACT."""
    g = p[(p["run"] == section["run"]) & (p["device"] == section["device"])]
    both = g[(g["status_base"] == "ok") & (g["status_enact"] == "ok")]
    lines = []
    mem = DEVICE_MEMORY.get(device_type(section["device"]), "mem_peak_alloc_mib")
    for (mode, metric), what in (((m, x), f"{m}, {w}") for m in dict.fromkeys(both["mode"])
                                 for x, w in ((mem, METRICS[mem][0] + " memory"), ("step_ms_p50", "median step time"))):
        rows = both[both["mode"] == mode]
        if metric == "step_ms_p50":   # only differences outside the steps' spread are changes
            noise = int(rows["time_within_noise"].map(lambda v: v is True).sum())
            unknown = int(rows["time_within_noise"].map(lambda v: v is None or v != v).sum())
            rows = rows[rows["time_within_noise"].map(lambda v: v is False)]
            if noise or unknown:
                lines.append(f"{what}: " + ", ".join(
                    ([f"within noise in {noise} pair{'s' if noise != 1 else ''} (the p10-p90 spreads overlap)"]
                     if noise else []) + ([f"not judged in {unknown} (fewer than 3 timed steps)"] if unknown else []))
                    + ".")
                what += " outside the noise"
        d = rows[f"{metric}_delta"].dropna()
        if len(d) == 1:
            lines.append(f"{what}: change {_pct(d.iloc[0])} (1 pair).")
        elif len(d):
            lines.append(f"{what}: median change {_pct(statistics.median(d))} over {len(d)} pairs "
                         f"(from {_pct(d.min())} to {_pct(d.max())}).")
    ap = both["coco_map_delta"].dropna()
    if len(ap):
        lines.append(f"COCO AP: median change {statistics.median(ap):+.1f} points over {len(ap)} pair{'s' if len(ap) != 1 else ''}."
                     .replace("-", "−"))
    fits = g[(g["status_base"] == "oom") & (g["status_enact"] == "ok")]
    for r in fits.to_dict("records"):
        lines.append(f"Fits only with ENACT: {r['detector']} {r['mode']} batch {r['batch_size']} "
                     f"at {r['image_size']} ({r['variant']}).")
    failed = g[(g["status_base"].isin(["error", "skipped"])) | (g["status_enact"].isin(["error", "skipped", "oom"]))]
    for r in failed.to_dict("records"):
        side = "ENACT" if r["status_enact"] not in ("ok", "missing") else "baseline"
        status = r["status_enact"] if side == "ENACT" else r["status_base"]
        lines.append(f"{STATUS_TEXT.get(status, status)} ({side}): {r['detector']} {r['mode']} batch "
                     f"{r['batch_size']} at {r['image_size']}; see the cases table for the message.")
    return lines


NOTES = [
    "Units: MiB = 2^20 bytes; ms = milliseconds; GFLOPs = 10^9 floating-point operations counted "
    "by torch's FlopCounterMode with 2 per multiply-add; AP in percent (COCOeval's stats x 100). "
    "Changes are (ENACT - baseline) / baseline in percent, and ENACT - baseline in AP points.",
    "Memory: `peak CUDA allocated/reserved` are torch's max_memory_allocated/reserved over the "
    "measured step; `peak NVML process/device` come from the driver (sampled every 10 ms); "
    "`peak CPU tracked tensors` is the exact peak of live tensor storage bytes on CPU, counting "
    "parameters, gradients, optimizer state and inputs alive at the peak, like CUDA allocated. "
    "`peak tensors, FakeTensorMode estimate` (cases with `fake = true`) is an estimate, not a "
    "measurement: the same live-tensor tracking over one training step run on fake tensors "
    "(shapes only, nothing allocated), with a fixed Hungarian assignment and a fixed ENACT "
    "cluster size; no time is measured for these cases.",
    "Step time: median over the timed iterations after warm-up, with its interquartile range "
    "[IQR]; images/s from the median.",
    "Encoder key length: for ENACT the keys left after clustering, averaged over the ENACT layers; "
    "for the baseline the full encoder sequence (from the ENACT record of the same setting when the "
    "baseline record does not carry it).",
    f"On deformable encoders (Deformable DETR, DINO) ENACT is labelled \"{DEFORMABLE_ENACT}\": "
    "their self-attention is deformable, so the variant clusters the query tokens instead of the "
    "keys, pools them in windows of neighbouring tokens by the same entropy procedure, and adds "
    "each cluster's update back to its tokens; the paper does not evaluate it.",
    "Cells: OOM = ran out of memory, error / skipped = the case did not produce readings, "
    "not run = no such case in the run, n/m = not measured (the record's null_reasons says why).",
]


def _plans(run_dirs) -> list[dict]:
    """plan.json of each run folder (written by `run` for a suite with a [plan] table)."""
    import json

    out = []
    for rd in run_dirs:
        p = Path(rd)
        p = p / "plan.json" if p.is_dir() else p.parent / "plan.json"
        if p.is_file():
            data = json.loads(p.read_text())
            out += data if isinstance(data, list) else [data]
    return out


def build_report(run_dirs, out_dir=None) -> dict[str, Path]:
    """Write the report of `run_dirs` (run folders or records.jsonl files) into `out_dir`
    (default: see default_out_dir). Returns {file name: path} of everything written."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("build_report needs at least one run folder (reports/<run_id>/)")
    df = load_records(run_dirs)   # first: bad input leaves no empty folder behind
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)
    paired = tables.paired_table(df)
    sections = tables.paired_sections(paired) if len(paired) else []
    coco = tables.coco_table(df)
    written: dict[str, Path] = {}

    def csv(name: str, frame: pd.DataFrame) -> None:
        path = out_dir / name
        frame.to_csv(path, index=False)
        written[name] = path

    runs = tables.runs_table(df)
    csv("runs.csv", runs)
    csv("records.csv", tables.csv_frame(df))
    csv("paired.csv", paired)
    if coco is not None:
        cols = ["run", "run_label", "case_id", "detector", "variant", "data", "checkpoint"] + \
               [c for c in df.columns if c.startswith("coco_")]
        csv("coco.csv", df[df["status"].eq("ok") & df[[c for c in cols if c.startswith("coco_")]].notna().any(axis=1)][cols])

    plots = _plots(df, out_dir)
    for pl in plots:
        written[pl.png.name], written[pl.svg.name] = pl.png, pl.svg

    suites = ", ".join(dict.fromkeys(f"'{s}'" for s in df["suite"]))
    title = f"enact-bench report: suite {suites}"
    blocks: list = [Para(f"{len(df)} cases from {df['run'].nunique()} run(s). Every figure in this "
                         f"report is computed from the records alone (records.jsonl); CSV files: "
                         f"{', '.join(n for n in written if n.endswith('.csv'))}.")]
    blocks += [Heading(2, "Runs"), Table(runs)]
    for plan in _plans(run_dirs):
        g, (h, w) = plan.get("gpu", {}), plan.get("image_size", [0, 0])
        blocks.append(Heading(2, f"Full-size estimates: {plan['detector']} at {h}x{w} on {g.get('name')}"))
        blocks.append(Para("ESTIMATES, not measurements: one AdamW training step under FakeTensorMode with "
                           "CUDA's kernel choices, its allocations replayed through a model of the caching "
                           f"allocator, plus the CUDA context ({g.get('context_mib')} MiB, an estimate) "
                           f"(`enact-bench plan`; budget {plan.get('budget_mib')} MiB of "
                           f"{g.get('usable_mib', g.get('memory_mib'))} usable)."))
        blocks.append(Table(tables.plan_frame(plan)))
    estimates = tables.estimates_table(df)
    if estimates is not None:
        blocks += [Heading(2, "Estimated GPU memory of the fake cases"),
                   Table(estimates, "Estimates (FakeTensorMode, CUDA target, caching-allocator model), not "
                                    "measurements; the measured cases are in the tables below.")]
    blocks.append(Heading(2, "Baseline vs ENACT"))
    several = df["run"].nunique() > 1
    for s in sections:
        where = (f"Run #{s['run']} on " if several else "On ") + s["device_name"]
        blocks.append(Heading(3, where))
        summary = _summary(paired, s)
        if summary:
            blocks.append(Bullets(tuple(summary)))
        blocks.append(Table(s["memory"], "Peak memory."))
        if s["memory_more"] is not None:
            blocks.append(Table(s["memory_more"], "Peak memory as the driver saw it (NVML)."))
        blocks.append(Table(s["speed"], "Time (step time: median [IQR])."))
        if s["compute"] is not None:
            blocks.append(Table(s["compute"], "Compute and encoder key length."))
        if s["accuracy"] is not None:
            blocks.append(Table(s["accuracy"], "COCO accuracy (AP in percent, change in AP points)."))
    if plots:
        blocks.append(Heading(2, "Plots"))
        blocks += [Figure(pl) for pl in plots]
    if coco is not None:
        blocks += [Heading(2, "COCO statistics"), Table(coco, "All 12 COCOeval bbox statistics, in percent; "
                                                             "n/a where the split has no objects.")]
    blocks += [Heading(2, "All cases"), Table(tables.cases_table(df))]
    blocks += [Heading(2, "Notes"), Bullets(tuple(NOTES))]
    md, page = write(blocks, title, out_dir)
    written[md.name], written[page.name] = md, page
    return written
