"""`plan` and `run` with model sources (hf:, factories): variants, what the fake step assumed,
HF's notes, padded sizes, one-line errors; a shipped hf suite's case measured for real."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from enact_bench.cli import app
from enact_bench.errors import UserInputError
from enact_bench.predict.gpus import get_gpu
from enact_bench.predict.plan import PlanRequest, variant_spec
from enact_bench.predict.planner import plan_detector


def test_source_variants_and_their_reasons():
    spec = variant_spec("hf:detr", "eager", 6, "hf:detr", {"tiny": True})
    assert spec.applicable and spec.overrides == {"tiny": True, "attn_implementation": "eager"}
    enact = variant_spec("hf:detr", "enact+fused", 6, "hf:detr", {})
    assert enact.enact_cluster_size == 6 and enact.overrides == {"attn_implementation": "sdpa"}
    skipped = variant_spec("hf:deformable_detr", "enact", 6, "hf:deformable_detr", {})
    assert not skipped.applicable and "multi-scale deformable" in skipped.reason
    assert not variant_spec("hf:table-transformer", "fused", 6, "hf:table-transformer", {}).applicable
    assert not variant_spec("detr", "eager", 6, "detr_tiny").applicable  # a preset has no eager variant


def test_plan_of_a_tiny_hf_model_lists_its_assumptions_attention_and_padding():
    req = PlanRequest("hf:rt_detr", get_gpu("h100-80gb"), (60, 90), batch_sizes=(2,),
                      variants=("original", "enact"), jobs=1, overrides={"tiny": True})
    plan = plan_detector(req)
    assert plan.padded_size == (64, 96) and "60x90 padded to 64x96" in plan.size_note
    by = {v.variant: v for v in plan.variants}
    assert [by[v].error for v in by] == [None, None]
    assert by["original"].attention == "sdpa"
    assert any("Hungarian matcher" in a for a in by["original"].assumptions)
    assert any("nonzero over tensors known from the batch" in a for a in by["original"].assumptions)
    peaks = {v: by[v].rows[0].tensor_peak_bytes for v in by}
    assert peaks["enact"] != peaks["original"]  # ENACT is in the AIFI layer
    doc = plan.as_dict()
    assert doc["padded_image_size"] == [64, 96] and doc["variants"][0]["assumptions"]


def test_plan_cli_source_errors_are_one_line(tmp_path):
    cli = CliRunner()
    bad = tmp_path / "bad.py"
    bad.write_text("def build():\n    raise ValueError('no such width')\n")
    cases = [(["plan", "hf:no_such_type", "--gpu", "h100-80gb"], "unknown model type"),
             (["plan", "detr_tiny", "--gpu", "h100-80gb", "--set", "tiny=true"], "--set applies to source models"),
             (["plan", "hf:detr", "--gpu", "h100-80gb", "--set", "config.nope=1"], "DetrConfig has no field 'nope'"),
             (["plan", f"{bad}:build", "--gpu", "h100-80gb"], "the factory raised ValueError: no such width")]
    for args, match in cases:
        result = cli.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert match in result.output and len(result.output.strip().splitlines()) == 1


def test_a_shipped_hf_suite_case_runs_for_real_on_cpu():
    from enact_bench.run.case import run_case
    from enact_bench.suite import load_suite

    suite = load_suite("hf-detr")
    assert suite.plan.detectors == ("hf:detr",) and suite.plan.variants == ("original", "eager", "enact")
    case = next(c for c in suite.cases if c.enact and c.mode == "train")
    import dataclasses
    rec = run_case(dataclasses.replace(case, device="cpu", iters=1, warmup=1, cpu_threads=1, flops=False))
    assert rec.status == "ok", rec.error
    assert rec.case["family"] == "hf:detr" and rec.case["attention"] == "sdpa"
    assert rec.metrics["cpu_tracked_peak_bytes"] > 0 and rec.metrics["enact_key_len_after"]
    assert json.loads(json.dumps(rec.case))["detector"] == "hf:detr"


def test_suite_with_a_bad_source_fails_at_load():
    from enact_bench.suite import load_suite_text

    with pytest.raises(UserInputError, match="detector = 'hf:nope': hf:nope: unknown model type"):
        load_suite_text('[defaults]\ndetector = "hf:nope"\nimage_size = "64x96"\n')
    with pytest.raises(UserInputError, match="overrides: hf:detr: config.nope: DetrConfig has no field"):
        load_suite_text('[defaults]\ndetector = "hf:detr"\nimage_size = "64x96"\noverrides = {"config.nope" = 1}\n')
