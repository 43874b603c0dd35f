"""A suite's [plan] is checked when the suite loads (PlanSpec): a wrong variant, detector, GPU or
size is a suite error naming the key and the file, never a warning after the run started."""
from __future__ import annotations

import pytest

from enact_bench.errors import SuiteError
from enact_bench.suite.load import load_suite
from enact_bench.suite.plan_spec import PlanSpec

CASES = '[defaults]\ndetector = "detr_tiny"\nimage_size = "64x96"\n'


def _load_plan(tmp_path, plan_lines: str):
    p = tmp_path / "planned.toml"
    p.write_text(CASES + "[plan]\n" + plan_lines + "\n")
    return load_suite(str(p))


@pytest.mark.parametrize("plan_lines, message", [
    ('detectors = ["detr_tiny"]\nvariants = ["original", "fast"]',
     "[plan]: variants = ['original', 'fast']: expected a list of one or more of original, fused, enact"),
    ('detectors = ["detr_tiny"]\nvariants = "enact"',
     "[plan]: variants = 'enact': expected a list of one or more of original, fused, enact"),
    ('detectors = ["detr_tiny"]\nvariants = []',
     "[plan]: variants = []: expected a list of one or more of original, fused, enact"),
    ('detectors = ["detr_tiny", "detr_giant"]', "[plan]: detectors: unknown detector 'detr_giant'; expected one of "),
    ('detectors = ["detr_tiny"]\nimage_size = "coco"',
     """[plan]: image_size = 'coco': expected one size, "HxW" (e.g. "800x1333") or [H, W]"""),
    ('detectors = ["detr_tiny"]\nimage_size = "16x1333"',
     "[plan]: image_size = 16x1333: both sides must be >= 32 pixels (the backbone's stride)"),
    # the checks made before PlanSpec keep their words
    ('detectors = "detr_tiny"', "[plan]: detectors must be a list of detector names"),
    ('detectors = ["detr_tiny"]\nenact_cluster_size = 0', "[plan]: enact_cluster_size must be an integer >= 1"),
    ('detectors = ["detr_tiny"]\ngpu = "gtx-480"', " [plan]: gpu = 'gtx-480': unknown GPU 'gtx-480'"),
    ('detectors = ["detr_tiny"]\nimage_size = "big"', """ [plan]: image_size = 'big': expected "HxW\""""),
    ('detectors = ["detr_tiny"]\ngpus = "h100"', "[plan]: unknown key 'gpus'; valid keys: detectors, gpu, "),
])
def test_a_bad_plan_is_a_suite_error_naming_the_file_and_the_key(tmp_path, plan_lines, message):
    with pytest.raises(SuiteError) as e:
        _load_plan(tmp_path, plan_lines)
    text = str(e.value)
    assert text.startswith(str(tmp_path / "planned.toml")) and message in text, text


def test_an_unknown_variant_stops_run_before_any_case_with_one_line(tmp_path):
    from typer.testing import CliRunner

    from enact_bench.cli import app

    suite = tmp_path / "s.toml"
    suite.write_text(CASES + '[plan]\ndetectors = ["detr_tiny"]\nvariants = ["orignal"]\n')
    r = CliRunner().invoke(app, ["run", "--suite", str(suite), "--out", str(tmp_path / "o"), "--inline"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
    assert lines[0].startswith("error: ") and "variants = ['orignal']" in lines[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # no run folder: nothing ran


def test_a_plan_table_becomes_a_typed_spec_with_plans_defaults(tmp_path):
    from enact_bench.predict.plan import DEFAULT_CLUSTER_SIZE, VARIANTS

    spec = _load_plan(tmp_path, 'detectors = ["detr_tiny"]\ngpu = "h100"\nimage_size = [640, 480]').plan
    assert spec == PlanSpec(detectors=("detr_tiny",), gpu="h100-80gb", image_size=(640, 480))
    assert spec.variants == VARIANTS and spec.enact_cluster_size == DEFAULT_CLUSTER_SIZE  # `plan`'s own defaults
    assert _load_plan(tmp_path, 'detectors = ["detr_tiny"]').plan.image_size == (800, 1333)
    assert load_suite(str(tmp_path / "planned.toml")).cases  # the cases load beside it


def test_a_spec_built_in_code_is_checked_too():
    assert PlanSpec(("detr_tiny",), gpu="H100").gpu == "h100-80gb"  # an alias becomes the table's name
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        PlanSpec(("nope",))
    with pytest.raises(ValueError, match="variants"):
        PlanSpec(("detr_tiny",), variants=("turbo",))
    with pytest.raises(ValueError, match="detectors must be a list"):
        PlanSpec(["detr_tiny"])  # a list is not the typed form; from_table converts it
