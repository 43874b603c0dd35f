"""The paired baseline/ENACT table against changes computed by hand from the fixture's values."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from enact_bench.report import load_records, paired_table
from enact_bench.report.labels import DEFORMABLE_ENACT
from enact_bench.report.tables import cases_table, paired_sections

FIX = Path(__file__).parent / "fixtures"


def raw(case_id: str, run_dir: Path = FIX) -> dict:
    """The record as written in the fixture file (not through the report code)."""
    for line in (run_dir / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["case_id"] == case_id:
            return rec
    raise KeyError(case_id)


@pytest.fixture(scope="module")
def df():
    return load_records([FIX, FIX / "cpu_run"])


@pytest.fixture(scope="module")
def paired(df):
    return paired_table(df)


def row(p, **kw):
    sel = p
    for k, v in kw.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, f"{kw}: {len(sel)} rows"
    return sel.iloc[0]


def test_fixture_values_are_the_ones_used_below():
    base = raw("detr_r50-base-train-b2-800x1066")["metrics"]
    enact = raw("detr_r50-enact-train-b2-800x1066")["metrics"]
    assert (base["mem_peak_alloc_mib"], enact["mem_peak_alloc_mib"]) == (2905.0, 2170.0)
    assert (base["step_ms_p50"], enact["step_ms_p50"]) == (95.0, 88.0)
    assert (base["gflops_fwd"], enact["gflops_fwd"]) == (344.0, 333.68)
    assert enact["enact_key_len_before"] == [850] * 6
    assert enact["enact_key_len_after"] == [141, 141, 170, 141, 121, 141]
    assert raw("detr_r50-base-infer-b1-coco-data=coco-checkpoint=detr-r50-e632da11.pth-evaluate=coco")["metrics"]["coco"]["map"] == 0.406
    assert raw("detr_r50-enact-infer-b1-coco-data=coco-checkpoint=enact_detr_r50.pth-evaluate=coco")["metrics"]["coco"]["map"] == 0.390


def test_paired_memory_time_flops_keylen_deltas(paired):
    r = row(paired, run=1, detector="detr_r50", mode="train", batch_size=2, image_size="800x1066",
            variant="ENACT")
    assert (r.status_base, r.status_enact) == ("ok", "ok")
    assert r.mem_peak_alloc_mib_base == 2905.0 and r.mem_peak_alloc_mib_enact == 2170.0
    assert r.mem_peak_alloc_mib_delta == pytest.approx((2170.0 - 2905.0) / 2905.0 * 100)   # -25.30 %
    assert r.step_ms_p50_delta == pytest.approx((88.0 - 95.0) / 95.0 * 100)                 # -7.37 %
    assert r.images_per_s_delta == pytest.approx((22.727 - 21.053) / 21.053 * 100)
    assert r.gflops_fwd_delta == pytest.approx((333.68 - 344.0) / 344.0 * 100)
    # key length: baseline = the full sequence (850 = 25 x 34 at stride 32), ENACT = mean kept keys
    assert r.key_len_base == 850.0
    assert r.key_len_enact == pytest.approx((141 * 4 + 170 + 121) / 6)                      # 142.5
    assert r.key_len_delta == pytest.approx((142.5 - 850.0) / 850.0 * 100)
    # reserved (= round(alloc * 1.18 + 20, 1) in the fixture)
    assert r.mem_peak_reserved_mib_delta == pytest.approx((2580.6 - 3447.9) / 3447.9 * 100)
    # CPU-only readings are not invented for a cuda case
    assert math.isnan(r.cpu_tracked_peak_mib_base) and math.isnan(r.cpu_tracked_peak_mib_enact)


def test_second_variant_is_paired_with_the_same_baseline(paired):
    r = row(paired, run=1, detector="detr_r50", mode="train", batch_size=2, image_size="800x1066",
            variant="ENACT (backend=sdpa, scale=standard)")
    assert r.case_id_base == "detr_r50-base-train-b2-800x1066"
    assert r.mem_peak_alloc_mib_delta == pytest.approx((1985.0 - 2905.0) / 2905.0 * 100)


def test_ap_change_is_in_points_and_checkpoints_may_differ(paired):
    r = row(paired, run=1, detector="detr_r50", mode="infer", data="coco")
    assert r.coco_map_base == pytest.approx(40.6) and r.coco_map_enact == pytest.approx(39.0)
    assert r.coco_map_delta == pytest.approx(39.0 - 40.6)          # -1.6 AP points, not percent
    assert r.coco_map_50_delta == pytest.approx(59.6 - 61.2)


def test_oom_and_error_show_as_status_not_gaps(paired):
    oom = row(paired, detector="detr_r50_dc5")
    assert (oom.status_base, oom.status_enact) == ("oom", "ok")
    assert math.isnan(oom.mem_peak_alloc_mib_base) and oom.mem_peak_alloc_mib_enact == 31200.0
    err = row(paired, detector="dino_r50_4scale")
    assert (err.status_base, err.status_enact) == ("ok", "error")
    assert err.variant == DEFORMABLE_ENACT
    cuda = next(s for s in paired_sections(paired) if s["run"] == 1 and s["device"] == "cuda")
    mem = cuda["memory"].set_index("detector")
    assert mem.loc["detr_r50_dc5", "peak CUDA allocated baseline (MiB)"] == "OOM"
    assert mem.loc["detr_r50_dc5", "peak CUDA allocated ENACT (MiB)"] == "31,200"
    assert mem.loc["detr_r50_dc5", "Δ peak CUDA allocated (%)"] == "fits only with ENACT"
    assert mem.loc["dino_r50_4scale", "peak CUDA allocated ENACT (MiB)"] == "error"
    assert mem.loc["anchor_detr_r50_dc5", "Δ peak CUDA allocated (%)"] == "−38.3 %"   # (9200-14900)/14900
    text = cuda["memory"].to_string() + cuda["speed"].to_string()
    assert "nan" not in text.lower()


def test_cpu_cases_use_tracked_bytes_and_show_no_cuda_columns(paired):
    r = row(paired, run=1, detector="detr_tiny", mode="train")
    b = raw("detr_tiny-base-train-b2-128x160")["metrics"]["cpu_tracked_peak_bytes"]
    e = raw("detr_tiny-enact-train-b2-128x160")["metrics"]["cpu_tracked_peak_bytes"]
    assert r.cpu_tracked_peak_mib_delta == pytest.approx((e - b) / b * 100)   # 46 MiB vs 56 MiB
    cpu = next(s for s in paired_sections(paired) if s["run"] == 1 and s["device"] == "cpu")
    assert not any("CUDA" in c or "NVML" in c for c in cpu["memory"].columns)
    assert "peak CPU tracked tensors baseline (MiB)" in cpu["memory"].columns


def test_runs_are_not_paired_across(paired):
    tiny = paired[(paired.detector == "detr_tiny") & (paired["mode"] == "train")]
    assert sorted(tiny.run) == [1, 2]
    r2 = row(paired, run=2, detector="detr_tiny")
    assert r2.step_ms_p50_delta == pytest.approx((228.0 - 240.0) / 240.0 * 100)


def test_every_case_is_listed_with_its_status(df):
    n = sum(1 for _ in (FIX / "records.jsonl").open()) + sum(1 for _ in (FIX / "cpu_run" / "records.jsonl").open())
    t = cases_table(df)
    assert len(t) == n == 39
    assert t["status"].value_counts().to_dict() == {"ok": 37, "OOM": 1, "error": 1}
    assert "synthetic" in t.loc[t["status"] == "error", "error"].iloc[0]
    assert {"peak memory (MiB)", "step time median (ms)", "throughput (images/s)"} <= set(t.columns)
    oom = t[t["case"] == "detr_r50_dc5-base-train-b8-800x1333"].iloc[0]
    assert oom["peak memory (MiB)"] == "OOM"


def test_headers_carry_units(paired):
    for s in paired_sections(paired):
        for frame in (s["memory"], s["speed"]):
            metric_cols = [c for c in frame.columns if c not in
                           ("detector", "mode", "batch", "image (px)", "data", "ENACT variant")]
            assert metric_cols and all(c.endswith(")") for c in metric_cols), metric_cols


def test_cases_with_different_checkpoints_pair():
    # fault 7: the fixture's baselines and ENACT variants carry different checkpoints and sha256s
    raw = [json.loads(line)["case"] for line in (FIX / "checkpoint_run" / "records.jsonl").open()]
    assert len({c["checkpoint_sha256"] for c in raw}) == len({c["checkpoint"] for c in raw}) == 4
    df = load_records(FIX / "checkpoint_run")
    p = paired_table(df)
    assert len(p) == 2 and set(p["status_enact"]) == {"ok"} and set(p["status_base"]) == {"ok"}
    assert set(p["case_id_enact"]) == {"detr_tiny-enact-train-b2-128x160", "conditional_detr_tiny-enact-train-b2-128x160"}
