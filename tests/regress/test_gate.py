"""The gate end to end: a tiny suite of fake-tensor cases run inline, a baseline written, then
injected regressions (a larger batch, ENACT off, an extra tensor saved for backward) must fail
naming the right metric; the same code passes; incomparable baselines exit 2."""
import dataclasses
import json

import pytest
import torch

import enact_bench.predict.fake_step as estimate
import enact_bench.run.steps as run_steps
from enact_bench.regress import load_baseline, run_check
from enact_bench.run import prepare_run, run_suite
from enact_bench.suite import Case, load_suite_text

SUITE = """
name = "gate-test"
[defaults]
device = "cpu"
mode = "train"
data = "synthetic"
detector = "detr_tiny"
image_size = "320x320"
batch_size = 2
fake = true
target = "cpu"  # the CI gate's exact CPU figures (a fake case's default target is "cuda")
[matrix]
enact = [false, true]
enact_config = {cluster_size = 10}
"""
BASE_ID = "detr_tiny-base-train-b2-320x320-fake=True"
ENACT_ID = "detr_tiny-enact-train-b2-320x320-enact_config=cluster_size=10-fake=True"


def _run(tmp_path, name):
    suite = load_suite_text(SUITE)
    run_dir, rid = prepare_run(suite, tmp_path / "reports", run_id=name)
    result = run_suite(suite, run_dir, rid, inline=True)
    assert all(r.status == "ok" for r in result.records), [r.error for r in result.records]
    return run_dir


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    torch.set_num_threads(1)
    run_dir = _run(tmp, "base")
    path = tmp / "baseline.json"
    res = run_check([run_dir], path, update=True)
    assert res.exit_code == 0 and res.baseline_written == path
    return path


def _failed(result):
    return {(r.case_id, r.metric) for r in result.comparison.regressed}


def test_baseline_holds_exact_metrics(baseline):
    doc = load_baseline(baseline)
    assert set(doc["cases"]) == {BASE_ID, ENACT_ID}
    base, enact = doc["cases"][BASE_ID]["metrics"], doc["cases"][ENACT_ID]["metrics"]
    assert base["fake_tracked_peak_bytes"] > base["fake_tracked_start_bytes"] > 0
    assert base["params"] == sum(p.numel() for p in run_steps.build_model(
        Case(detector="detr_tiny")).parameters())
    assert base["attention_paths"] == ["math"]  # MultiheadAttention with need_weights=True
    assert "sdpa_flash_cpu" in enact["attention_paths"]  # ENACT's fused encoder attention
    assert doc["torch"] == torch.__version__ and doc["device_kind"] == "cpu"


def test_rerun_of_the_same_code_passes(baseline, tmp_path):
    res = run_check([_run(tmp_path, "again")], baseline)
    assert res.exit_code == 0, res.reason
    assert all(r.verdict == "same" for r in res.comparison.rows)


def test_larger_batch_fails_on_peak(baseline, tmp_path, monkeypatch):
    make = estimate.make_batch
    monkeypatch.setattr(estimate, "make_batch", lambda bs, *a, **k: make(bs + 1, *a, **k))
    res = run_check([_run(tmp_path, "bigger")], baseline)
    assert res.exit_code == 1
    assert (BASE_ID, "fake_tracked_peak_bytes") in _failed(res)
    assert (ENACT_ID, "fake_tracked_peak_bytes") in _failed(res)
    assert "fake_tracked_peak_bytes" in res.reason


def test_enact_turned_off_fails_the_enact_case(baseline, tmp_path, monkeypatch):
    build = run_steps.build_model
    monkeypatch.setattr(run_steps, "build_model", lambda case: build(dataclasses.replace(case, enact=False)))
    res = run_check([_run(tmp_path, "no-enact")], baseline)
    assert res.exit_code == 1
    failed = _failed(res)
    # at this size the step's peak lies outside the encoder (it moves by W_prob's few bytes), so
    # the activation memory the encoder keeps for backward is the metric that names the change
    assert (ENACT_ID, "saved_for_backward_bytes") in failed
    assert (ENACT_ID, "gflops_fwd") in failed
    assert not any(case == BASE_ID for case, _ in failed)  # the baseline case is untouched
    # without W_prob the parameter count drops: reported as an improvement, not a failure
    assert any(r.case_id == ENACT_ID and r.metric == "params" and r.verdict == "improved" for r in res.comparison.rows)


def test_extra_saved_tensor_fails_on_saved_bytes(baseline, tmp_path, monkeypatch):
    build = run_steps.build_model

    def with_extra(case):
        model = build(case)
        # out * ones: the multiplication saves the ones tensor for backward (an extra stored
        # tensor), in the backbone's first trained stage: alive until the end of the backward
        model.backbone[0].body.layer2.register_forward_hook(lambda mod, inp, out: out * torch.ones_like(out))
        return model

    monkeypatch.setattr(run_steps, "build_model", with_extra)
    res = run_check([_run(tmp_path, "extra")], baseline)
    assert res.exit_code == 1
    assert (BASE_ID, "saved_for_backward_bytes") in _failed(res)
    assert (ENACT_ID, "saved_for_backward_bytes") in _failed(res)
    assert "saved_for_backward_bytes" in res.reason


@pytest.mark.parametrize("field,value,exit_code", [
    ("torch", "2.13.0", 2), ("suite", "other", 2), ("device_kind", "cuda", 2),
    ("torch", torch.__version__.split("+")[0].rsplit(".", 1)[0] + ".99", 0),  # same major.minor
])
def test_comparability(baseline, tmp_path, field, value, exit_code):
    doc = json.loads(baseline.read_text())
    doc[field] = value
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # the baseline's own records stand in for a run of the same code
    recs = []
    for case_id, c in json.loads(baseline.read_text())["cases"].items():
        recs.append({"schema": 1, "run_id": "run", "case": c["case"], "case_id": case_id, "suite": "gate-test",
                     "status": "ok", "metrics": c["metrics"],
                     "env": {"device_kind": "cpu", "torch": torch.__version__, "device_name": "x"}})
    (run_dir / "records.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    res = run_check([run_dir], other)
    assert res.exit_code == exit_code, res.reason
    if exit_code == 2:
        assert field.replace("_", " ") in res.reason and "\n" not in res.reason
