"""Records (schema 1, docs/CONTRACTS.md) from one or more run folders -> one flat DataFrame.

One row per record. Case fields keep their names (`detector`, `batch_size`, ...), metrics keep
theirs (`mem_peak_alloc_mib`, ...), COCO stats become `coco_<stat>`, environment fields
`env_<field>`. Per-layer ENACT lists stay Python lists. Derived columns: `run` (1-based index of
the run folder), `run_label` (device, torch version, commit), `family`, `variant`, `image_size`
("HxW", or the size rule such as "coco", or "native"), `image_pixels`, `device_type`,
`setting_json` (enact_bench.records.pair_key: the case minus the variant and its checkpoint), `overrides_json`, `enact_config_json`, `key_len_before`
and `key_len_after` (means over the encoder layers). `coco_*` columns are in percent (COCOeval's
fraction x 100); COCOeval's -1 (no objects of that size) becomes an empty cell.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from enact_bench.metrics import MIB
from enact_bench.records import latest_per_case, pair_key, read_record_dicts, records_file

from .labels import detector_family, device_type, variant_label

SCHEMA = 1
CASE_FIELDS = ("detector", "enact", "attention", "mode", "device", "dtype", "batch_size", "data",
               "iters", "warmup", "seed", "checkpoint", "fake")


def records_path(run_dir: str | Path) -> Path:
    """`run_dir` may be a run folder (reports/<run_id>/) or a records.jsonl file itself."""
    return records_file(run_dir)


def read_records(path: str | Path) -> list[dict]:
    """The records of a records.jsonl file as dicts (enact_bench.records.read_records: a torn
    last line is skipped with a warning, any other bad line is an error naming it)."""
    return read_record_dicts(path)


def flatten_record(rec: dict) -> dict:
    case = rec.get("case") or {}
    metrics = rec.get("metrics") or {}
    env = rec.get("env") or {}
    row = {k: rec.get(k) for k in ("run_id", "suite", "case_id", "status", "error", "started_at",
                                   "duration_s")}
    for k in CASE_FIELDS:
        row[k] = case.get(k)
    row["enact"] = bool(case.get("enact"))
    row["device_type"] = device_type(case.get("device"))
    size = case.get("image_size")
    if isinstance(size, (list, tuple)) and len(size) == 2:
        row["image_h"], row["image_w"] = int(size[0]), int(size[1])
        row["image_size"] = f"{row['image_h']}x{row['image_w']}"
        row["image_pixels"] = row["image_h"] * row["image_w"]
    else:   # DETR's multi-scale sizes ("coco"), or the data's own sizes
        row["image_h"] = row["image_w"] = row["image_pixels"] = None
        dist = case.get("image_size_dist")
        row["image_size"] = f"{dist} sizes" if dist else str(size or "native")
    # everything a baseline and its ENACT variant share: the pairing key
    row["setting_json"] = pair_key(case)
    cfg = case.get("enact_config")
    row["enact_config_json"] = json.dumps(cfg, sort_keys=True) if cfg else ""
    row["overrides_json"] = json.dumps(case.get("overrides") or {}, sort_keys=True)
    row["family"] = case.get("family") or rec.get("family") or detector_family(row["detector"] or "")
    row["variant"] = variant_label(row["enact"], cfg, row["family"])
    for k, v in metrics.items():
        if k == "coco":
            for ck, cv in (v or {}).items():
                row[f"coco_{ck}"] = cv
        else:
            row[k] = v
    if row.get("cpu_tracked_peak_mib") is None and row.get("cpu_tracked_peak_bytes") is not None:
        row["cpu_tracked_peak_mib"] = row["cpu_tracked_peak_bytes"] / MIB
    for k, v in env.items():
        row[f"env_{k}"] = v
    row["null_reasons_json"] = json.dumps(rec.get("null_reasons") or {}, sort_keys=True)
    return row


def layer_values(v) -> list[float] | None:
    """Per-layer list -> floats; a layer given per image (cluster_scope="image") -> its mean."""
    if not isinstance(v, (list, tuple)) or not v:
        return None
    out = []
    for x in v:
        if isinstance(x, (list, tuple)):
            out.append(sum(x) / len(x) if x else float("nan"))
        else:
            out.append(float(x) if x is not None else float("nan"))
    return out


def mean_over_layers(v) -> float | None:
    vals = layer_values(v)
    return sum(vals) / len(vals) if vals else None


def run_label(env: dict, run_id: str) -> str:
    commit = env["git_commit"][:8] if env.get("git_commit") else "no commit"
    commit += "-dirty" if env.get("git_dirty") else ""
    return f"{env.get('device_name') or 'unknown device'} · torch {env.get('torch') or '?'} · {commit}"


def load_records(run_dirs) -> pd.DataFrame:
    """Flat DataFrame of every record in `run_dirs` (a path or a list of paths), in file order."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    rows, labels = [], []
    for i, rd in enumerate(run_dirs, start=1):
        path = records_path(rd)
        recs = latest_per_case(read_records(path))
        if not recs:
            raise ValueError(f"{path} holds no records: did the run finish any case?")
        env = next((r["env"] for r in recs if r.get("env")), {})   # skipped cases may have none
        label = run_label(env, recs[0].get("run_id") or "")
        if label in labels:   # same device, torch and commit: tell the runs apart by their id
            label = f"{label} · {recs[0].get('run_id') or path.parent.name}"
        labels.append(label)
        for rec in recs:
            row = flatten_record(rec)
            row["run"], row["run_label"], row["run_dir"] = i, label, str(path.parent)
            rows.append(row)
    df = pd.DataFrame(rows)
    for col in [c for c in df.columns if c.startswith("coco_")]:
        # COCOeval stats are fractions, -1 (or null) where a size class has no objects: keep
        # percent (AP 40.6, as papers print it), and no value where there is none.
        v = pd.to_numeric(df[col], errors="coerce")
        df[col] = (v * 100.0).where(v >= 0)
    for side in ("before", "after"):
        # dense encoders shorten keys; deformable ones (token clustering) shorten the queries
        keys = df.get(f"enact_key_len_{side}", pd.Series([None] * len(df))).map(mean_over_layers)
        queries = df.get(f"enact_query_len_{side}", pd.Series([None] * len(df))).map(mean_over_layers)
        df[f"key_len_{side}"] = queries.where(queries.notna(), keys)
    for col in ("batch_size", "image_h", "image_w", "image_pixels"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df
