"""The estimate in suites: `target`/`gpu` on fake cases, the [plan] table, and the report's
estimate sections (labelled as estimates)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from enact_bench.errors import SuiteError
from enact_bench.suite import Case, PlanSpec, load_suite, load_suite_text

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
    assert Case(detector="detr_tiny").target is None  # a case that is not fake has no target


def test_a_fake_case_defaults_to_the_cuda_target_and_a_cpu_one_keeps_its_old_id():
    cuda = Case(detector="detr_tiny", image_size=(96, 128), fake=True)
    cpu = dataclasses.replace(cuda, target="cpu")
    assert cuda.target == "cuda" and cuda == dataclasses.replace(cuda, target="cuda")
    assert cuda.case_id == "detr_tiny-base-train-b2-96x128-fake=True-target=cuda"
    assert cpu.case_id == "detr_tiny-base-train-b2-96x128-fake=True"  # as before the CUDA target existed
    assert Case.from_dict(cuda.to_dict()) == cuda and Case.from_dict(cpu.to_dict()) == cpu
    old = {k: v for k, v in cpu.to_dict().items() if k != "target"}  # a record written before `target`
    assert Case.from_dict(old).target == "cpu"


def test_the_ci_suites_fake_cases_run_the_cpu_target_with_the_baselines_ids():
    base = json.loads((Path(__file__).parents[2] / "suites/baselines/ci-cpu.json").read_text())
    cases = load_suite("ci").cases
    assert sorted(c.case_id for c in cases) == sorted(base["cases"])
    fake = [c for c in cases if c.fake]
    assert len(fake) == 2 and {c.target for c in fake} == {"cpu"}
    assert {c.target for c in cases if not c.fake} == {None}


def test_only_the_ci_suite_has_fake_cases():
    """Only `ci` has fake cases (pinned to cpu); every other shipped suite measures real steps."""
    from enact_bench.suite import list_suites

    for name in list_suites():
        for c in load_suite(name).cases:
            assert not c.fake or name == "ci", (name, c.case_id)


@pytest.mark.parametrize("line, message", [('target = "tpu"', "target"), ('gpu = "gtx-480"', "unknown GPU")])
def test_bad_target_or_gpu_names_the_key(line, message):
    text = SUITE.replace('target = "cuda"', line) if "target" in line else SUITE.replace('gpu = "h100"', line)
    with pytest.raises(SuiteError, match=message):
        load_suite_text(text)


def test_target_needs_a_fake_case():
    with pytest.raises((SuiteError, ValueError), match="fake = true"):
        load_suite_text(SUITE.replace("fake = true", "fake = false"))
    with pytest.raises(ValueError, match="set fake = true"):
        Case(detector="detr_tiny", image_size=(96, 128), target="cpu")  # "cpu" too: a real case has no target


def test_target_on_a_real_case_is_a_one_line_cli_error(tmp_path):
    from typer.testing import CliRunner

    from enact_bench.cli import app

    suite = tmp_path / "s.toml"
    suite.write_text(SUITE.replace("fake = true\n", "").replace('gpu = "h100"\n', ""))
    r = CliRunner().invoke(app, ["run", "--suite", str(suite), "--out", str(tmp_path / "o"), "--inline"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
    assert lines[0].startswith("error: ") and "target and gpu apply to fake = true cases" in lines[0]


def test_a_fake_case_without_target_runs_the_cuda_target_and_its_record_says_so():
    """detr_tiny with fused attention: the record of a fake case that names no target is the
    CUDA target's (tests/predict/test_cuda_policy.py pins what that target changes), not the CPU's."""
    import torch

    from enact_bench.detectors import create_detector
    from tests.estimate_helpers import estimate_detector
    from enact_bench.run.case import run_case

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        case = Case(detector="detr_tiny", image_size=(96, 128), fake=True, overrides={"attention": "sdpa"})
        default, cpu = run_case(case), run_case(dataclasses.replace(case, target="cpu"))
        kw = dict(overrides={"attention": "sdpa"}, count_flops=False)
        lib_cuda = estimate_detector("detr_tiny", 2, (96, 128), target="cuda", **kw)
        lib_cpu = estimate_detector("detr_tiny", 2, (96, 128), target="cpu", **kw)
    finally:
        torch.set_num_threads(before)
    assert default.status == cpu.status == "ok", (default.error, cpu.error)
    assert default.case["target"] == "cuda" and cpu.case["target"] == "cpu"
    md, mc = default.metrics, cpu.metrics
    assert md["fake_tracked_peak_bytes"] == lib_cuda.peak_bytes != lib_cpu.peak_bytes == mc["fake_tracked_peak_bytes"]
    cfg = create_detector("detr_tiny").cfg
    # every attention call (encoder self, decoder self and cross) goes to CUDA's memory-efficient
    # kernel (fp32, dropout 0.1), which keeps output + logsumexp, not the weights and dropout mask
    assert md["predicted_sdpa_kernels"] == {"efficient": cfg.enc_layers + 2 * cfg.dec_layers}
    assert md["saved_for_backward_bytes"] < mc["saved_for_backward_bytes"]
    assert "predicted_tensor_peak_mib" not in mc or mc["predicted_tensor_peak_mib"] is None


def test_the_smoke_suite_plans_detr_r50_on_an_80gb_gpu_first():
    s = load_suite("smoke")
    assert s.plan == PlanSpec(detectors=("detr_r50",), gpu="h100-80gb", image_size=(800, 1333),
                              variants=("original", "fused", "enact"), enact_cluster_size=6)


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
