"""compare() on hand-made records: exact vs noisy tolerances, spread of repeats, case status."""
import pytest

from enact_bench.regress import NotComparable, compare, make_baseline, torch_series

ENV_GPU = {"device_kind": "cuda", "device_name": "NVIDIA H100", "torch": "2.14.1+cu128"}


def rec(metrics, case_id="c", status="ok", env=ENV_GPU, suite="ci"):
    return {"schema": 1, "run_id": "r", "case": {}, "case_id": case_id, "suite": suite, "status": status,
            "metrics": metrics, "env": env,
            "null_reasons": {}, "error": None if status == "ok" else "RuntimeError: boom"}


GPU = {"mem_peak_alloc_mib": 1000.0, "mem_peak_reserved_mib": 1200.0, "step_ms_p50": 100.0,
       "step_ms_iqr": 2.0, "saved_for_backward_bytes": 10_000, "params": 5, "attention_paths": ["sdpa_flash"]}


def verdicts(comp):
    return {r.metric: r.verdict for r in comp.rows}


def test_torch_series():
    assert torch_series("2.14.1+cu128") == torch_series("2.14.0") == "2.14"
    assert torch_series("2.15.0") != "2.14"


def test_gpu_baseline_tight_alloc_loose_reserved_and_time():
    base = make_baseline([[rec(GPU)]])
    assert base["tolerances"]["mem_peak_alloc_mib"]["rel"] < base["tolerances"]["mem_peak_reserved_mib"]["rel"]
    # reserved +5% and time +10%: noise; alloc +0.5%: within its tight tolerance
    cur = dict(GPU, mem_peak_reserved_mib=1260.0, step_ms_p50=110.0, mem_peak_alloc_mib=1005.0)
    comp = compare([rec(cur)], base)
    assert comp.exit_code == 0
    assert verdicts(comp)["mem_peak_reserved_mib"] == "within noise"
    # alloc +3%: regression, named
    comp = compare([rec(dict(GPU, mem_peak_alloc_mib=1030.0))], base)
    assert comp.exit_code == 1 and [r.metric for r in comp.regressed] == ["mem_peak_alloc_mib"]
    # time x2: regression
    assert verdicts(compare([rec(dict(GPU, step_ms_p50=200.0))], base))["step_ms_p50"] == "regressed"


def test_spread_of_repeats_widens_the_time_tolerance():
    runs = [[rec(dict(GPU, step_ms_p50=t))] for t in (100.0, 140.0, 120.0)]
    base = make_baseline(runs)
    assert base["cases"]["c"]["metrics"]["step_ms_p50"] == 120.0  # the median
    assert base["cases"]["c"]["spread"]["step_ms_p50"] == 40.0
    # +50%: beyond 25% of 120 (30) but within 3 x spread (120)
    assert verdicts(compare([rec(dict(GPU, step_ms_p50=180.0))], base))["step_ms_p50"] == "within noise"


def test_exact_metrics_any_growth_fails_decrease_improves():
    base = make_baseline([[rec(GPU)]])
    v = verdicts(compare([rec(dict(GPU, saved_for_backward_bytes=10_001))], base))
    assert v["saved_for_backward_bytes"] == "regressed"
    comp = compare([rec(dict(GPU, saved_for_backward_bytes=9_000))], base)
    assert comp.exit_code == 0 and verdicts(comp)["saved_for_backward_bytes"] == "improved"


def test_attention_path_falling_back_to_math_fails():
    base = make_baseline([[rec(GPU)]])
    comp = compare([rec(dict(GPU, attention_paths=["math"]))], base)
    assert verdicts(comp)["attention_paths"] == "regressed"


def test_failed_missing_and_new_cases():
    base = make_baseline([[rec(GPU), rec(GPU, case_id="d")]])
    comp = compare([rec(GPU, status="oom"), rec(GPU, case_id="e")], base)
    v = {(r.case_id, r.verdict) for r in comp.rows}
    assert ("c", "failed") in v and ("d", "missing") in v and ("e", "new") in v
    assert comp.exit_code == 1


@pytest.mark.parametrize("env,suite,word", [
    (dict(ENV_GPU, device_name="NVIDIA A100"), "ci", "GPU"),
    (dict(ENV_GPU, torch="2.15.0"), "ci", "torch"),
    (dict(ENV_GPU, device_kind="cpu"), "ci", "device kind"),
    (ENV_GPU, "smoke", "suite"),
])
def test_not_comparable(env, suite, word):
    base = make_baseline([[rec(GPU)]])
    with pytest.raises(NotComparable, match=word):
        compare([rec(GPU, env=env, suite=suite)], base)


def test_check_command_exit_codes_and_table(tmp_path):
    import json

    from typer.testing import CliRunner

    from enact_bench.cli import app

    def run_dir(name, metrics):
        d = tmp_path / name
        d.mkdir()
        (d / "records.jsonl").write_text(json.dumps(rec(metrics)) + "\n")
        return str(d)

    base, same, worse = run_dir("a", GPU), run_dir("b", GPU), run_dir("c", dict(GPU, saved_for_backward_bytes=20_000))
    baseline = str(tmp_path / "baseline.json")
    cli = CliRunner()
    assert cli.invoke(app, ["check", base, "--baseline", baseline, "--update"]).exit_code == 0
    assert cli.invoke(app, ["check", same, "--baseline", baseline]).exit_code == 0
    out = cli.invoke(app, ["check", worse, "--baseline", baseline])
    assert out.exit_code == 1 and "saved_for_backward_bytes" in out.output and "regressed" in out.output
    assert cli.invoke(app, ["check", same, "--baseline", str(tmp_path / "none.json")]).exit_code == 2
