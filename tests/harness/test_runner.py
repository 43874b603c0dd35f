"""enact_bench.run: a real tiny case in-process, OOM and errors as records, the subprocess path, resume."""
from __future__ import annotations

import json

import pytest
import torch

from enact_bench.records import Record
from enact_bench.run import case as run_case_mod
from enact_bench.run import launch, run_dir as run_dir_mod, steps as run_steps, suite_run
from enact_bench.records import read_records
from enact_bench.suite import Case, load_suite_text

TINY = dict(detector="detr_tiny", image_size=(64, 96), batch_size=1, iters=1, warmup=1, device="cpu",
            cpu_threads=1)


@pytest.fixture(scope="module")
def train_enact_record():
    return run_case_mod.run_case(Case(**TINY, enact=True, mode="train"), run_id="t", suite="unit")


def test_train_case_measures_everything_it_can(train_enact_record):
    r = train_enact_record
    assert r.status == "ok", r.error
    m = r.metrics
    assert m["params"] >= m["params_trainable"] > 0
    assert m["cpu_tracked_peak_bytes"] > m["cpu_tracked_start_bytes"] > 0
    # start: parameters + grads + AdamW's two moments at least (float32)
    assert m["cpu_tracked_start_bytes"] >= 4 * 4 * m["params_trainable"]
    assert m["step_count"] == 1 and m["first_step_ms"] > 0 and m["images_per_s"] > 0
    assert m["gflops_fwd_bwd"] > m["gflops_fwd"] > 0 and m["gmacs_fwd"] == pytest.approx(m["gflops_fwd"] / 2)
    assert m["saved_for_backward_bytes"] > 0
    assert len(m["enact_key_len_before"]) == 2  # detr_tiny: 2 ENACT encoder layers
    assert all(a <= b for a, b in zip(m["enact_key_len_after"], m["enact_key_len_before"]))
    for k in ("mem_peak_alloc_mib", "nvml_device_used_peak_mib"):  # no CUDA here: null with a reason
        assert m[k] is None and r.null_reasons[k]
    assert r.case["attention"] is not None and r.case["enact_config"]["sigma"] == 3.0
    assert r.env["device_kind"] == "cpu"


def test_oom_and_errors_become_records(monkeypatch):
    def boom(case):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(run_steps, "build_model", boom)
    r = run_case_mod.run_case(Case(**TINY), run_id="t")
    assert r.status == "oom" and "out of memory" in r.error
    assert r.metrics["params"] is None and r.null_reasons["params"] == "case ended with status oom"

    monkeypatch.setattr(run_steps, "build_model", lambda case: 1 / 0)
    r = run_case_mod.run_case(Case(**TINY), run_id="t")
    assert r.status == "error" and r.error.startswith("ZeroDivisionError")


def test_cuda_case_is_skipped_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = run_case_mod.run_case(Case(**{**TINY, "device": "cuda"}))
    assert r.status == "skipped" and "CUDA" in r.error


def test_subprocess_writes_the_childs_record(tmp_path):
    # an override the detector does not know fails fast inside the child: its record comes back
    case = Case(**TINY, overrides={"wings": 2})
    r = launch.launch_subprocess(case, tmp_path, run_id="t", suite="unit")
    assert r.status == "error" and "wings" in r.error
    assert (tmp_path / "logs" / f"{case.case_id}.log").read_text().strip().endswith(")")


def test_subprocess_that_dies_still_gives_a_record(tmp_path):
    r = launch.launch_subprocess(Case(**TINY), tmp_path, run_id="t", suite="unit", timeout_s=0.05)
    assert r.status == "error" and "timed out" in r.error


def test_resume_skips_ok_cases_and_keeps_records(tmp_path, monkeypatch):
    suite = load_suite_text('name = "u"\n[defaults]\ndetector = "detr_tiny"\nimage_size = "64x96"\n'
                            '[matrix]\nenact = [false, true]')
    run_dir, run_id = run_dir_mod.prepare_run(suite, tmp_path)
    calls = []

    def fake(case, *, run_id, suite):
        calls.append(case.case_id)
        status = "error" if (case.enact and len(calls) == 2) else "ok"
        return Record(run_id=run_id, suite=suite, case_id=case.case_id, status=status, case=case.to_dict())

    monkeypatch.setattr(run_case_mod, "run_case", fake)
    first = suite_run.run_suite(suite, run_dir, run_id, inline=True)
    assert [r.status for r in first.records] == ["ok", "error"]
    again, meta = run_dir_mod.load_run_suite(run_dir)
    second = suite_run.run_suite(again, run_dir, meta["run_id"], inline=True)
    assert second.skipped_ok == ["detr_tiny-base-train-b2-64x96"]
    assert calls == ["detr_tiny-base-train-b2-64x96", "detr_tiny-enact-train-b2-64x96",
                     "detr_tiny-enact-train-b2-64x96"]
    assert [r.status for r in read_records(run_dir)] == ["ok", "error", "ok"]
    assert json.loads((run_dir / "run.json").read_text())["case_ids"] == [c.case_id for c in suite.cases]
    assert (run_dir / "suite.toml").read_text() == suite.text


def test_ctrl_c_keeps_finished_records(tmp_path, monkeypatch):
    suite = load_suite_text('name = "u"\n[defaults]\ndetector = "detr_tiny"\nimage_size = "64x96"\n'
                            '[matrix]\nenact = [false, true]')
    run_dir, run_id = run_dir_mod.prepare_run(suite, tmp_path)

    def fake(case, *, run_id, suite):
        if case.enact:
            raise KeyboardInterrupt
        return Record(run_id=run_id, suite=suite, case_id=case.case_id, status="ok", case=case.to_dict())

    monkeypatch.setattr(run_case_mod, "run_case", fake)
    res = suite_run.run_suite(suite, run_dir, run_id, inline=True)
    assert res.interrupted and [r.case_id for r in read_records(run_dir)] == ["detr_tiny-base-train-b2-64x96"]


def test_resume_after_a_torn_last_line_keeps_the_new_record(tmp_path, monkeypatch, capsys):
    # fault 2: the run was killed while writing its last record; --resume re-runs that case
    suite = load_suite_text('name = "u"\n[defaults]\ndetector = "detr_tiny"\nimage_size = "64x96"\n'
                            '[matrix]\nenact = [false, true]')
    run_dir, run_id = run_dir_mod.prepare_run(suite, tmp_path)

    def fake(case, *, run_id, suite):
        return Record(run_id=run_id, suite=suite, case_id=case.case_id, status="ok", case=case.to_dict())

    monkeypatch.setattr(run_case_mod, "run_case", fake)
    suite_run.run_suite(suite, run_dir, run_id, inline=True)
    path = run_dir / "records.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # the second record torn
    with pytest.warns(UserWarning, match="incomplete last record"):
        again = suite_run.run_suite(*run_dir_mod.load_run_suite(run_dir)[:1], run_dir, run_id, inline=True)
    assert again.skipped_ok == ["detr_tiny-base-train-b2-64x96"]
    assert [r.case_id for r in read_records(path)] == ["detr_tiny-base-train-b2-64x96", "detr_tiny-enact-train-b2-64x96"]
    assert "cut off mid-write" in capsys.readouterr().err
