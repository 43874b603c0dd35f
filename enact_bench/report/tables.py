"""Tables from the flat records frame (load.py): numeric ones for CSV, text ones for reading.

Pairing: a baseline and an ENACT record are paired when they share the run and every case field
except `enact`, `enact_config`, `attention` and `checkpoint` (COCO cases evaluate different
checkpoints). When baselines differ in `attention`, an ENACT record is paired with the baseline of
its own `attention` if there is one, else with each of them. Records without a partner keep a row,
with the partner's status "missing".
"""
from __future__ import annotations

import pandas as pd

from enact_bench.summary import within_noise

from .labels import (COCO_NAMES, COCO_ORDER, DEVICE_MEMORY, MEMORY_TABLE, METRICS, MODE_ORDER,
                     STATUS_TEXT, delta_header, device_title, fmt_delta, fmt_value, header,
                     device_rank, device_type, is_missing, text)

PAIR_KEYS = ("run", "setting_json")
PAIR_METRICS = MEMORY_TABLE + ("step_ms_p50", "images_per_s", "gflops_fwd", "gflops_fwd_bwd",
                               "key_len", "coco_map", "coco_map_50", "coco_map_75")
AP_METRICS = ("coco_map", "coco_map_50", "coco_map_75")


def _get(rec: dict | None, col: str):
    if rec is None or rec.get("status") != "ok":
        return float("nan")
    v = rec.get(col)
    return float("nan") if is_missing(v) else float(v)


def _delta(vb: float, ve: float, kind: str) -> float:
    if vb != vb or ve != ve:
        return float("nan")
    if kind == "pts":
        return ve - vb
    return (ve - vb) / vb * 100.0 if vb else float("nan")


def _pairs(df: pd.DataFrame) -> list[tuple[dict | None, dict | None]]:
    groups: dict[tuple, list[dict]] = {}
    for rec in df.to_dict("records"):
        groups.setdefault(tuple(str(rec.get(k)) for k in PAIR_KEYS), []).append(rec)
    pairs = []
    for recs in groups.values():
        bases = [r for r in recs if not r["enact"]]
        used = set()
        for e in (r for r in recs if r["enact"]):
            same = [b for b in bases if b.get("attention") == e.get("attention")] or bases
            if not same:
                pairs.append((None, e))
            for b in same:
                pairs.append((b, e))
                used.add(id(b))
        pairs += [(b, None) for b in bases if id(b) not in used]
    return pairs


def paired_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per baseline/ENACT pair: `<metric>_base`, `<metric>_enact`, `<metric>_delta`
    (percent change, or AP points for `coco_*`), with both sides' status. Numeric: NaN where a
    side did not run, failed, or did not measure the metric; the status columns say which."""
    rows = []
    for b, e in _pairs(df):
        ref = b or e
        row = {k: ref.get(k) for k in ("run", "run_label", "detector", "family", "mode", "device",
                                        "dtype", "batch_size", "image_size", "image_pixels", "data")}
        row["device_name"] = device_title(ref.get("env_device_name"), ref.get("device"),
                                          ref.get("env_device_kind"), ref.get("env_host"))
        row["variant"] = e["variant"] if e else "(no ENACT case)"
        row["attention_base"] = b.get("attention") if b else None
        row["case_id_base"] = b["case_id"] if b else None
        row["case_id_enact"] = e["case_id"] if e else None
        row["status_base"] = b["status"] if b else "missing"
        row["status_enact"] = e["status"] if e else "missing"
        for m in PAIR_METRICS:
            kind = METRICS[m][2]
            if m == "key_len":   # baseline: full length (ENACT's "before" when the baseline lacks it)
                vb = _get(b, "key_len_before")
                if vb != vb and b is not None and b.get("status") == "ok":
                    vb = _get(e, "key_len_before")
                ve = _get(e, "key_len_after")
            else:
                vb, ve = _get(b, m), _get(e, m)
            row[f"{m}_base"], row[f"{m}_enact"], row[f"{m}_delta"] = vb, ve, _delta(vb, ve, kind)
        for q in ("step_ms_iqr", "step_ms_p25", "step_ms_p75", "step_ms_p10", "step_ms_p90", "step_count"):
            row[f"{q}_base"], row[f"{q}_enact"] = _get(b, q), _get(e, q)
        side = {s: {"step_ms_p10": row[f"step_ms_p10_{s}"], "step_ms_p90": row[f"step_ms_p90_{s}"],
                    "step_count": row[f"step_count_{s}"]} for s in ("base", "enact")}
        row["time_within_noise"] = within_noise(side["base"], side["enact"])
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out["_d"] = out["device"].map(device_rank)
        out["_m"] = out["mode"].map(lambda m: MODE_ORDER.get(m, 9))
        out["_v"] = out["variant"].map(lambda v: (v.startswith("(no"), len(v), v))
        out = out.sort_values(["run", "_d", "_m", "detector", "batch_size", "image_pixels", "data", "_v"],
                              kind="stable", na_position="first")
        out = out.drop(columns=["_d", "_m", "_v"]).reset_index(drop=True)
    return out


def _side_cell(status: str, value: float, unit: str) -> str:
    if status == "missing":
        return "not run"
    if status != "ok":
        return STATUS_TEXT.get(status, status)
    return fmt_value(value, unit)


def _delta_cell(sb: str, se: str, d: float, kind: str) -> str:
    if sb == "ok" and se == "ok":
        return fmt_delta(d, kind)
    if sb == "missing":
        return "no baseline"
    if se == "missing":
        return "no ENACT case"
    if sb == "oom" and se == "ok":
        return "fits only with ENACT"
    if se == "oom" and sb == "ok":
        return "ENACT OOM"
    if sb == se:
        return f"both {STATUS_TEXT.get(sb, sb)}"
    return f"{'ENACT' if sb == 'ok' else 'baseline'} {STATUS_TEXT.get(se if sb == 'ok' else sb, '?')}"


def _time_cell(cell: str, noise) -> str:
    """A time change: "~ (noise)" when the two cases' p10-p90 spreads overlap, "n/a (< 3 steps)"
    when a case has no spread, else the percentage."""
    if noise is True:
        return "~ (noise)"
    if noise is None or noise != noise:
        return "n/a (< 3 steps)"
    return cell


# Paired tables are split so that none needs sideways scrolling at 1400 px: the memory reading
# that matters on the device (and the estimate) first, the driver's readings apart; time apart
# from compute. Within a table the change columns come right after the row's identity.
MEMORY_MAIN = ("mem_peak_alloc_mib", "mem_peak_reserved_mib", "cpu_tracked_peak_mib", "fake_tracked_peak_mib")
TIME_METRICS = ("step_ms_p50", "images_per_s")
COMPUTE_METRICS = ("gflops_fwd", "gflops_fwd_bwd", "key_len")


def _ident(p: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "detector": p["detector"], "mode": p["mode"], "batch": p["batch_size"].astype("string"),
        "image (px)": p["image_size"], "ENACT variant": p["variant"]})


def _measured(p: pd.DataFrame, metrics) -> list[str]:
    return [m for m in metrics if p[[f"{m}_base", f"{m}_enact"]].notna().any().any()]


def display_paired(p: pd.DataFrame, metrics) -> pd.DataFrame:
    """Text table: the row's identity, `Δ <label> (%)` for every metric, then per metric
    `<label> baseline (unit)` and `<label> ENACT (unit)`, then the data source.
    Failed sides read OOM / error / skipped / not run; unmeasured values read n/m."""
    out = _ident(p)
    for m in metrics:  # the changes first: what a reader compares across rows
        cells = [_delta_cell(sb, se, d, METRICS[m][2]) for sb, se, d in
                 zip(p["status_base"], p["status_enact"], p[f"{m}_delta"])]
        if m in TIME_METRICS and "time_within_noise" in p.columns:  # a time difference inside the spread
            cells = [_time_cell(c, n) if sb == se == "ok" else c
                     for c, n, sb, se in zip(cells, p["time_within_noise"], p["status_base"], p["status_enact"])]
        out[delta_header(m)] = cells
    for m in metrics:
        unit = METRICS[m][1]
        for side in ("base", "enact"):
            vals = [_side_cell(s, v, unit) for s, v in zip(p[f"status_{side}"], p[f"{m}_{side}"])]
            if m == "step_ms_p50":   # median [IQR]
                vals = [c if s != "ok" or iq != iq else f"{c} [{fmt_value(iq)}]"
                        for c, s, iq in zip(vals, p[f"status_{side}"], p[f"step_ms_iqr_{side}"])]
            name = header(m, "baseline" if side == "base" else "ENACT")
            if m == "step_ms_p50":
                name = name.replace("median", "median [IQR]")
            out[name] = vals
    out["data"] = p["data"].to_numpy()
    return out


def paired_sections(p: pd.DataFrame) -> list[dict]:
    """One section per (run, device): its memory, speed and accuracy tables, with only the
    metrics measured there (a CPU section has no CUDA columns)."""
    sections = []
    keys = sorted({(r, d) for r, d in zip(p["run"], p["device"])},
                  key=lambda k: (k[0], device_rank(k[1])))
    for run, device in keys:
        g = p[(p["run"] == run) & (p["device"] == device)].reset_index(drop=True)
        mem_all = _measured(g, MEMORY_TABLE) or [DEVICE_MEMORY.get(device_type(device), "mem_peak_alloc_mib")]
        mem = [m for m in mem_all if m in MEMORY_MAIN] or mem_all[:1]
        mem_more = [m for m in mem_all if m not in mem]
        time = _measured(g, TIME_METRICS) or ["step_ms_p50"]
        compute = _measured(g, COMPUTE_METRICS)
        ap_rows = g[g[[f"{m}_{s}" for m in AP_METRICS for s in ("base", "enact")]].notna().any(axis=1)]
        sections.append({
            "run": run, "run_label": g["run_label"].iloc[0], "device": device,
            "device_name": g["device_name"].iloc[0],
            "memory": display_paired(g, mem), "speed": display_paired(g, time),
            "memory_more": display_paired(g, mem_more) if mem_more else None,
            "compute": display_paired(g, compute) if compute else None,
            "accuracy": display_paired(ap_rows.reset_index(drop=True), _measured(ap_rows, AP_METRICS))
            if len(ap_rows) else None,
        })
    return sections


def primary_memory(rec: dict) -> tuple[float, str | None]:
    """(MiB, metric) of the memory reading that matters on the record's device."""
    first = DEVICE_MEMORY.get(device_type(rec.get("device")))
    for m in ((first,) if first else ()) + MEMORY_TABLE:
        v = rec.get(m)
        if not is_missing(v):
            return float(v), m
    return float("nan"), None


def cases_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every case with its status, main readings and error message (text, for reading)."""
    rows = []
    several = df["run"].nunique() > 1
    for rec in df.to_dict("records"):
        mem, which = primary_memory(rec)
        ok = rec["status"] == "ok"
        row = {"run": f"#{rec['run']}"} if several else {}
        row.update({
            "case": rec["case_id"], "ENACT variant": rec["variant"], "device": rec["device"],
            "status": STATUS_TEXT.get(rec["status"], rec["status"]),
            "peak memory (MiB)": fmt_value(mem) if ok else STATUS_TEXT.get(rec["status"], rec["status"]),
            "memory measure": METRICS[which][0] if which else "",
            "step time median (ms)": fmt_value(rec.get("step_ms_p50")) if ok else "",
            "throughput (images/s)": fmt_value(rec.get("images_per_s")) if ok else "",
            "error": _short(rec.get("error")),
        })
        rows.append(row)
    return pd.DataFrame(rows)


def _short(msg, n: int = 90) -> str:
    if is_missing(msg) or not msg:
        return ""
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[: n - 1] + "…"


def coco_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """All COCO stats (percent) of every case that has them."""
    cols = [f"coco_{k}" for k in COCO_ORDER if f"coco_{k}" in df.columns]
    if not cols:
        return None
    has = df[df["status"].eq("ok") & df[cols].notna().any(axis=1)]
    if not len(has):
        return None
    out = pd.DataFrame({"run": "#" + has["run"].astype(str), "detector": has["detector"],
                        "ENACT variant": has["variant"], "data": has["data"],
                        "checkpoint": has["checkpoint"].fillna("(random weights)"),
                        "image (px)": has["image_size"]})
    for c in cols:
        out[f"{COCO_NAMES[c[5:]]} (%)"] = [fmt_value(v, "%") if not is_missing(v) else "n/a"
                                          for v in has[c]]
    return out.reset_index(drop=True)


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for run, g in df.groupby("run", sort=True):
        r = g.iloc[0]
        counts = g["status"].value_counts()
        rows.append({
            "run": f"#{run}", "environment": r["run_label"], "run id": r["run_id"], "suite": r["suite"],
            "device": text(r.get("env_device_name"), "?"), "torch": text(r.get("env_torch"), "?"),
            "torchvision": text(r.get("env_torchvision"), "?"), "CUDA": text(r.get("env_cuda"), "none"),
            "driver": text(r.get("env_driver"), "none"), "git commit": text(r.get("env_git_commit"), "?"),
            "host": text(r.get("env_host"), "?"),
            "cases ok / OOM / error / skipped": " / ".join(
                str(int(counts.get(s, 0))) for s in ("ok", "oom", "error", "skipped")),
        })
    return pd.DataFrame(rows)


def csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The flat records with lists and dicts as JSON text, for a CSV file."""
    import json
    out = df.copy()
    for c in out.columns:
        if out[c].map(lambda v: isinstance(v, (list, dict))).any():
            out[c] = out[c].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    return out


ESTIMATE_COLUMNS = {"predicted_tensor_peak_mib": "tensor peak MiB (estimate)",
                    "predicted_alloc_peak_mib": "allocated MiB (estimate)",
                    "predicted_reserved_peak_mib": "reserved MiB (estimate)",
                    "predicted_device_used_mib": "device MiB (estimate)", "predicted_fits": "fits (estimate)"}


def estimates_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """fake = true cases with the CUDA target: what the GPU is predicted to use, beside the
    measured cases (every column here is an estimate: nothing ran on a GPU)."""
    if "predicted_tensor_peak_mib" not in df.columns:
        return None
    rows = df[df["predicted_tensor_peak_mib"].notna()]
    if rows.empty:
        return None
    out = pd.DataFrame({"case": rows["case_id"], "variant": rows["variant"],
                        "target": rows.get("target", pd.Series(["cuda"] * len(rows), index=rows.index)),
                        "gpu": rows.get("predicted_gpu", pd.Series([None] * len(rows), index=rows.index))})
    for k, label in ESTIMATE_COLUMNS.items():
        if k in rows.columns:
            out[label] = rows[k].map(_cell)
    return out.reset_index(drop=True)


def _cell(v) -> str:
    """A value of an estimate table as the other tables write it: yes/no, 75,672, n/m."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if is_missing(v):
        return "n/m"
    if isinstance(v, (int, float)):
        return fmt_value(v)
    return str(v)


def plan_frame(plan: dict) -> pd.DataFrame:
    """One `enact-bench plan` result (its JSON) as a table: a row per variant and batch size."""
    rows = []
    for v in plan.get("variants", []):
        if not v.get("applicable", True) or not v.get("rows"):
            rows.append({"variant": v["variant"], "batch": "", "tensor peak MiB": "", "allocated MiB": "",
                         "reserved MiB": "", "device MiB": "", "fits": "",
                         "note": v.get("error") or f"n/a: {v.get('reason', '')}"})
            continue
        for r in v["rows"]:
            rows.append({"variant": v["variant"], "batch": str(r["batch_size"]),
                         "tensor peak MiB": _cell(r["tensor_peak_mib"]), "allocated MiB": _cell(r["alloc_peak_mib"]),
                         "reserved MiB": _cell(r["reserved_peak_mib"]), "device MiB": _cell(r["device_used_mib"]),
                         "fits": _cell(r["fits"]),
                         "note": "largest batch that fits" if r["batch_size"] == v.get("max_batch_size") else ""})
    return pd.DataFrame(rows)
