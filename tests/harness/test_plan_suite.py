"""The estimate in suites: `target`/`gpu` on fake cases, the [plan] table, and the report's
estimate sections (labelled as estimates)."""
from __future__ import annotations

import json

import pytest

from enact_bench.errors import SuiteError
from enact_bench.suites import Case, load_suite, load_suite_text

SUITE = '''
name = "t"
[defaults]
device = "cpu"
image_size = "96x128"
[matrix]
detector = "detr_tiny"
fake = true
target = "cuda"
gpu = "h100"
'''


def test_fake_cases_take_target_and_gpu_and_name_them_in_the_case_id():
    (case,) = load_suite_text(SUITE).cases
    assert case.target == "cuda" and case.gpu == "h100-80gb"  # the alias resolves to the table's name
    assert "target=cuda" in case.case_id and "gpu=h100_80gb" in case.case_id  # _slug keeps [A-Za-z0-9._=,+]
    assert Case(detector="detr_tiny").target == "cpu"  # the default keeps the CI gate's case ids and bytes


@pytest.mark.parametrize("line, message", [('target = "tpu"', "target"), ('gpu = "gtx-480"', "unknown GPU")])
def test_bad_target_or_gpu_names_the_key(line, message):
    text = SUITE.replace('target = "cuda"', line) if "target" in line else SUITE.replace('gpu = "h100"', line)
    with pytest.raises(SuiteError, match=message):
        load_suite_text(text)


def test_target_needs_a_fake_case():
    with pytest.raises((SuiteError, ValueError), match="fake = true"):
        load_suite_text(SUITE.replace("fake = true", "fake = false"))


def test_the_smoke_suite_plans_detr_r50_on_an_80gb_gpu_first():
    s = load_suite("smoke")
    assert s.plan == {"detectors": ["detr_r50"], "gpu": "h100-80gb", "image_size": [800, 1333],
                      "variants": ["original", "fused", "enact"], "enact_cluster_size": 6}


def test_plan_table_rejects_unknown_keys():
    with pytest.raises(SuiteError, match=r"\[plan\]: unknown key 'gpus'"):
        load_suite_text(SUITE + '\n[plan]\ndetectors = ["detr_tiny"]\ngpus = "h100"\n')


def test_a_cuda_target_fake_case_records_predicted_gpu_memory():
    from enact_bench.run.case import run_case

    (case,) = load_suite_text(SUITE).cases
    rec = run_case(case)
    assert rec.status == "ok", rec.error
    m = rec.metrics
    assert rec.case["target"] == "cuda"
    assert m["predicted_tensor_peak_mib"] == pytest.approx(m["fake_tracked_peak_mib"], abs=1e-3)
    assert m["predicted_tensor_peak_mib"] <= m["predicted_alloc_peak_mib"] <= m["predicted_reserved_peak_mib"]
    assert m["predicted_device_used_mib"] > m["predicted_reserved_peak_mib"] and m["predicted_fits"] is True
    assert m["predicted_gpu"] == "h100-80gb"
    assert sum(m["predicted_breakdown_mib"].values()) == pytest.approx(m["predicted_tensor_peak_mib"], abs=0.1)


def test_report_shows_plan_and_estimates_labelled(tmp_path):
    from enact_bench.report.build import build_report

    run = tmp_path / "run"
    run.mkdir()
    rec = {"schema": 1, "run_id": "r", "suite": "t", "case_id": "detr_tiny-base-train-b2-96x128-fake=True-target=cuda",
           "status": "ok", "error": None,
           "case": {"detector": "detr_tiny", "enact": False, "mode": "train", "device": "cpu", "dtype": "float32",
                    "batch_size": 2, "image_size": [96, 128], "fake": True, "target": "cuda"},
           "metrics": {"fake_tracked_peak_mib": 214.2, "predicted_tensor_peak_mib": 214.2,
                       "predicted_alloc_peak_mib": 236.4, "predicted_reserved_peak_mib": 262.0,
                       "predicted_device_used_mib": 812.0, "predicted_fits": True, "predicted_gpu": "h100-80gb"},
           "null_reasons": {}, "env": {"device_name": "cpu", "torch": "x"}, "started_at": "", "duration_s": 1.0}
    (run / "records.jsonl").write_text(json.dumps(rec) + "\n")
    plan = {"detector": "detr_r50", "target": "cuda", "image_size": [800, 1333], "budget_mib": 77064.9,
            "gpu": {"name": "h100-80gb", "memory_mib": 81559, "usable_mib": 81121, "context_mib": 550.0},
            "variants": [{"variant": "original", "applicable": True, "max_batch_size": 50,
                          "rows": [{"batch_size": 50, "tensor_peak_mib": 72970.0, "alloc_peak_mib": 73000.0,
                                    "reserved_peak_mib": 75100.0, "device_used_mib": 75672.0, "fits": True}]},
                         {"variant": "fused", "applicable": False, "reason": "no dense attention", "rows": []}]}
    (run / "plan.json").write_text(json.dumps([plan]))
    written = build_report([run], tmp_path / "out")
    md = written["report.md"].read_text()
    assert "Full-size estimates: detr_r50 at 800x1333 on h100-80gb" in md and "ESTIMATES, not measurements" in md
    assert "largest batch that fits" in md and "n/a: no dense attention" in md
    assert "device MiB (estimate)" in md and "812" in md
