"""`enact-bench plan`: the JSON schema of the issue, the batch-size search's bracket, variants that
do not apply, and one-line errors (exit 2), including --validate without a GPU."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from enact_bench.cli import app
from enact_bench.predict.gpus import custom_gpu
from enact_bench.predict.plan import PlanRequest, parse_hw, variant_spec
from enact_bench.predict.planner import plan_detector

cli = CliRunner()
SIZE = "96x128"


def test_plan_json_schema_and_the_largest_batch_bracket(tmp_path):
    out = tmp_path / "plan.json"
    r = cli.invoke(app, ["plan", "detr_tiny", "--gpu-mem", "1.5", "--image-size", SIZE,
                         "--variants", "original,enact", "--enact-cluster-size", "2", "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert d["detector"] == "detr_tiny" and d["target"] == "cuda" and d["dtype"] == "float32"
    assert d["image_size"] == [96, 128] and d["gpu"]["memory_mib"] == 1536
    budget = d["budget_mib"]
    assert [v["variant"] for v in d["variants"]] == ["original", "enact"]
    for v in d["variants"]:
        rows = {row["batch_size"]: row for row in v["rows"]}
        b = v["max_batch_size"]
        assert b >= 2 and rows[b]["fits"] and not rows[b + 1]["fits"]  # the rows at max and the next show it
        for row in v["rows"]:
            assert set(row) >= {"batch_size", "tensor_peak_mib", "alloc_peak_mib", "reserved_peak_mib",
                                "device_used_mib", "fits", "breakdown_mib"}
            assert row["tensor_peak_mib"] <= row["alloc_peak_mib"] <= row["reserved_peak_mib"] < row["device_used_mib"]
            assert row["fits"] == (row["device_used_bytes"] <= budget * 2**20 + 0.05 * 2**20)
            # the breakdown's categories add up to the tensor peak it attributes
            assert sum(row["breakdown_mib"].values()) == pytest.approx(row["tensor_peak_mib"], abs=0.1)
    assert "max batch" in r.output and "ESTIMATES" in r.output


def test_explicit_batch_sizes_are_run_as_given_and_none_is_called_the_largest():
    from enact_bench.predict.plan import fits_summary

    req = PlanRequest("detr_tiny", custom_gpu(1.5), (96, 128), batch_sizes=(1, 3), variants=("original",), jobs=1)
    v = plan_detector(req).variants[0]
    assert [r.batch_size for r in v.rows] == [1, 3] and not v.searched
    assert v.max_batch_size is None and v.as_dict()["max_batch_size"] is None  # nothing was searched
    assert all(r.fits for r in v.rows)  # both fit in 1.5 GiB at this size
    assert fits_summary(v, req) == "fits at 1, 3"
    # tensor peak grows with the batch; the fake runs are independent of each other's order
    assert v.rows[1].tensor_peak_bytes > v.rows[0].tensor_peak_bytes


@pytest.mark.parametrize("search", [False, True])
def test_parallel_variants_give_the_same_rows_as_one_process(search):
    """Forked workers (in a fresh process: torch forbids autograd in a child forked after the
    parent ran a backward, which pytest's earlier tests did) give the rows one process gives;
    for a search, also with the probes run batch by batch for all variants in one process each."""
    import subprocess
    import sys

    code = ("import json; from enact_bench.predict.plan import PlanRequest; from enact_bench.predict.planner import plan_detector; "
            "from enact_bench.predict.gpus import custom_gpu; "
            "p = plan_detector(PlanRequest('detr_tiny', custom_gpu(1.5), (96, 128), jobs={jobs}, {sizes}"
            "enact_cluster_size=2, variants=('original', 'fused', 'enact'))); "
            "print(json.dumps([[r.batch_size, r.source, r.tensor_peak_bytes, r.alloc_peak_bytes, r.reserved_peak_bytes, "
            "r.device_used_bytes, r.breakdown_mib, r.peak_phase] for v in p.variants for r in v.rows] "
            "+ [[v.max_batch_size, v.fake_runs, v.affine_confirmed_at, v.error] for v in p.variants]))")
    sizes = "" if search else "batch_sizes=(2,), "
    outs = [json.loads(subprocess.run([sys.executable, "-c", code.format(jobs=j, sizes=sizes)], capture_output=True,
                                      text=True, check=True).stdout.strip().splitlines()[-1]) for j in (1, 3)]
    assert outs[0] == outs[1]
    assert [v[-1] for v in outs[0][-3:]] == [None, None, None]
    if search:
        assert [v[1:3] for v in outs[0][-3:]] == [[[2, 3, 4], 4]] * 3  # the stream confirmed for each
        assert len(outs[0]) > 3 * 3  # batch 2 and at least the largest batch and the next, per variant
    else:
        assert len(outs[0]) == 3 + 3


def test_fused_does_not_apply_to_deformable_encoders_and_says_why():
    for family in ("deformable_detr", "dino", "anchor_detr"):
        for variant in ("fused", "enact+fused"):
            spec = variant_spec(family, variant, 6)
            assert not spec.applicable and spec.reason
    assert variant_spec("detr", "fused", 6).overrides == {"attention": "sdpa"}
    both = variant_spec("conditional_detr", "enact+fused", 4)
    assert both.applicable and both.overrides == {"attention": "sdpa"} and both.enact_cluster_size == 4
    plan = plan_detector(PlanRequest("deformable_detr_tiny", custom_gpu(4), (96, 128), batch_sizes=(1,),
                                     variants=("fused",)))
    v = plan.variants[0]
    assert not v.applicable and v.rows == [] and v.max_batch_size is None and "deformable" in v.reason


def test_dino_plans_train_with_their_denoising_queries():
    """No variant of DINO's plan turns denoising off (fake steps run it: dino_denoising.py)."""
    for variant in ("original", "enact"):
        spec = variant_spec("dino", variant, 6)
        assert "dn_number" not in spec.overrides and "denoising" not in spec.reason


def test_run_worst_is_the_augmentations_largest_padded_batch_per_batch_size():
    from enact_bench.data.augmentation_sizes import max_long_side
    from enact_bench.predict.image_sizes import parse_image_size

    sizes = parse_image_size("run-worst", "detr")
    side = max_long_side().long_side
    assert sizes.policy == "run-worst" and sizes.hw(1) == (800, 1333) and sizes.typical_hw == (800, 1333)
    assert sizes.hw(2) == sizes.hw(64) == (side, side) and side > 1333  # the resize's rounding
    assert "ASSUMED" in sizes.basis and parse_image_size("worst", "dino") == parse_image_size("run-worst", "detr")
    fixed = parse_image_size("800x1333", "detr")
    assert fixed.policy == "fixed" and fixed.hw(1) == fixed.hw(9) == (800, 1333) and fixed.typical_hw is None
    assert parse_hw("800x1333") == (800, 1333)


def test_a_run_worst_plan_runs_each_batch_at_its_size_with_the_typical_figure_beside_it():
    """Batch 1 at the single worst image, batch 2 at the padded worst, and beside each the
    typical batch's figures: those of a fixed plan at the typical size, to the byte."""
    from enact_bench.predict.image_sizes import ImageSizes

    sizes = ImageSizes("run-worst", (128, 160), (96, 128), (96, 128), "test sizes")
    base = dict(batch_sizes=(1, 2), variants=("original",), jobs=1)
    plan = plan_detector(PlanRequest("detr_tiny", custom_gpu(1.5), images=sizes, **base))
    fixed = plan_detector(PlanRequest("detr_tiny", custom_gpu(1.5), (96, 128), **base)).variants[0]
    v = plan.variants[0]
    assert [r.image_size for r in v.rows] == [(96, 128), (128, 160)]
    for r, f in zip(v.rows, fixed.rows):
        assert (r.typical_tensor_peak_bytes, r.typical_device_used_bytes, r.typical_fits) == \
            (f.tensor_peak_bytes, f.device_used_bytes, f.fits)
    assert v.rows[0].tensor_peak_bytes == fixed.rows[0].tensor_peak_bytes  # batch 1: the typical image itself
    assert v.rows[1].tensor_peak_bytes > fixed.rows[1].tensor_peak_bytes  # batch 2: padded larger
    d = plan.as_dict()
    assert (d["image_size_policy"], d["image_size"], d["image_size_batch1"], d["typical_image_size"]) == \
        ("run-worst", [128, 160], [96, 128], [96, 128])
    row2 = d["variants"][0]["rows"][1]
    assert row2["image_size"] == [128, 160] and row2["typical_tensor_peak_mib"] < row2["tensor_peak_mib"]
    assert row2["typical_device_used_mib"] <= row2["device_used_mib"]


@pytest.mark.parametrize("args, message", [
    (["detr_tiny", "--gpu", "tpu-9000"], "unknown GPU"),
    (["detr_tiny"], "exactly one of --gpu"),
    (["detr_tiny", "--gpu", "h100", "--gpu-mem", "80"], "exactly one of --gpu"),
    (["detr_tiny", "--gpu", "h100", "--image-size", "big"], "--image-size"),
    (["detr_tiny", "--gpu", "h100", "--image-size", "16x800"], ">= 32 pixels"),
    (["detr_tiny", "--gpu", "h100", "--variants", "original,turbo"], "--variants"),
    (["detr_tiny", "--gpu", "h100", "--batch-size", "0"], "--batch-size"),
    (["detr_tiny", "--gpu", "h100", "--dtype", "int8"], "--dtype"),
    (["no_such_detector", "--gpu", "h100"], "unknown detector"),
    (["deformable_detr_tiny", "--gpu", "h100", "--variants", "enact+fused"], "no dense encoder attention"),
    (["detr_tiny", "deformable_detr_tiny", "--gpu", "h100", "--variants", "original,enact+fused"], "deformable_detr_tiny"),
    (["detr_tiny", "--gpu", "all", "--gpu-mem", "80"], "--gpu all"),
    (["detr_tiny", "--gpu", "h100", "--json", "."], "is a directory"),
    (["detr_tiny", "--gpu", "h100", "--json", "pyproject.toml/plan.json"], "is a file"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    r = cli.invoke(app, ["plan", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_enact_plus_fused_is_enact_in_the_encoder_and_sdpa_in_the_decoder():
    """The detector it builds: ENACT layers in the encoder, the decoder's attentions keep no weights;
    its fake step keeps less than ENACT alone (the decoder's stored weights gone)."""
    from enact_bench.detectors import build_variant

    spec = variant_spec("detr", "enact+fused", 2)
    with torch.device("meta"):
        model = build_variant("detr_tiny", cluster_size=2, overrides=spec.overrides)
    assert all(type(l.self_attn).__name__ == "EnactAttention" for l in model.transformer.encoder.layers)
    assert all(not l.need_weights for l in model.transformer.decoder.layers)
    from enact_bench.predict.search import trainer_for

    req = PlanRequest("detr_tiny", custom_gpu(1.5), (96, 128), enact_cluster_size=2)
    steps = {v: trainer_for(req, variant_spec("detr", v, 2)).step(2) for v in ("enact", "enact+fused")}
    allocated = {v: sum(n for kind, _, n in m.events if kind == "alloc") for v, m in steps.items()}
    # the decoder's attention weights (and their dropout masks) are no longer allocated
    assert allocated["enact+fused"] < allocated["enact"]
    assert steps["enact+fused"].sdpa_kernels.get("efficient", 0) > steps["enact"].sdpa_kernels.get("efficient", 0)


def test_json_to_stdout_holds_the_json_alone_and_given_batch_sizes_are_never_the_largest(tmp_path):
    r = cli.invoke(app, ["plan", "detr_tiny", "--gpu-mem", "1.5", "--image-size", SIZE, "-b", "1", "-b", "2",
                         "--variants", "original", "--json", "-"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)  # nothing else on stdout
    v = d["variants"][0]
    assert v["max_batch_size"] is None and not v["searched"] and [row["batch_size"] for row in v["rows"]] == [1, 2]
    assert "fits at 1, 2" in r.stderr and "max batch" not in r.stderr  # the table went to stderr
    title = " ".join(r.stderr.split())  # the console wraps the title at its width
    assert "float32" in title and "fixed 96x128" in title  # the title names the dtype and the size policy
    assert "fake training step at batch 1" in r.stderr  # progress: one line per step when not a terminal
    assert not (tmp_path / "-").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path; a CUDA device is present")
def test_validate_without_a_gpu_exits_2_with_one_line():
    r = cli.invoke(app, ["plan", "detr_tiny", "--gpu", "h100", "--validate"])
    assert r.exit_code == 2
    assert "--validate" in r.output and "CUDA" in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.gpu
def test_validate_on_a_gpu_compares_predicted_and_measured(tmp_path):
    out = tmp_path / "v.json"
    r = cli.invoke(app, ["plan", "detr_tiny", "--gpu", "h100", "--image-size", "256x320", "-b", "1", "-b", "2",
                         "--variants", "original,fused", "--validate", "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert len(d["validation"]) == 4
    for v in d["validation"]:
        assert v["measured"]["status"] == "ok"
        assert 0.8 < v["ratios"]["alloc"] < 1.25  # the allocator model within 25% on a tiny model


@pytest.mark.parametrize("variant", ["original", "fused", "enact"])
def test_rows_from_the_affine_stream_equal_fake_runs_to_the_byte(variant):
    """The fast path (fake runs at 2-4, rows synthesized from the stream fitted through 2 and 3 and
    confirmed at 4) against a fake run per row: every figure a row shows, at three batch sizes,
    identical."""
    from enact_bench.predict.search import VariantSearch

    req = PlanRequest("detr_tiny", custom_gpu(1.5), (96, 128), enact_cluster_size=2, jobs=1)
    slow_req = PlanRequest("detr_tiny", custom_gpu(1.5), (96, 128), enact_cluster_size=2, jobs=1, affine=False)
    spec = variant_spec("detr", variant, 2)
    fast, slow = VariantSearch(req, spec), VariantSearch(slow_req, spec)
    fast.row(2)
    fast.fit_stream()
    fast.fill_breakdown()
    assert fast.stream is not None and fast.stream.confirmed_at == 4, fast.affine_note
    fields = ("tensor_peak_bytes", "alloc_peak_bytes", "reserved_peak_bytes", "device_used_bytes", "fits",
              "breakdown_mib", "modules_mib", "peak_phase", "sdpa_kernels")
    light = fast.row(7, breakdown=False)  # a row without the breakdown: the same figures, the breakdown added later
    light_figures = {k: getattr(light, k) for k in fields[:5]}
    assert light.breakdown_mib is None
    for b in (2, 7, 13):
        f, s = fast.row(b), slow.row(b)
        if b == 7:
            assert f is light and {k: getattr(s, k) for k in fields[:5]} == light_figures
        assert f.source == ("fake" if b == 2 else "affine") and s.source == "fake"
        assert {k: getattr(f, k) for k in fields} == {k: getattr(s, k) for k in fields}, b
    assert sorted(fast.measures) == [2, 3, 4]  # no fake run beyond the probes


@pytest.mark.parametrize("detector, variant", [("detr_tiny", "fused"),
                                              ("deformable_detr_tiny", "enact")])
def test_a_run_worst_plans_two_streams_share_one_template_and_equal_fake_runs(detector, variant):
    """fit_pair: the run-worst size fitted through batch 2 and 3, carried to the typical size with
    that size's fake run at 2 and confirmed by its fake run at 4 (four fake runs for both streams);
    the rows of both, at two far batch sizes, equal a fake run per row to the byte."""
    from enact_bench.predict.image_sizes import ImageSizes
    from enact_bench.predict.search import VariantSearch, fit_pair

    sizes = ImageSizes("run-worst", (128, 160), (96, 128), (96, 128), "test sizes")
    req = PlanRequest(detector, custom_gpu(1.5), images=sizes, enact_cluster_size=2, jobs=1)
    spec = variant_spec(detector.replace("_tiny", ""), variant, 2)
    main = VariantSearch(req, spec)
    typical = VariantSearch(req.typical(), spec, main.trainer, breakdown=False)
    fit_pair(main, typical)
    assert main.pair_note is None and main.stream.confirmed_at == typical.stream.confirmed_at == 4
    assert sorted(main.measures) == [2, 3] and sorted(typical.measures) == [2, 4]
    fields = ("tensor_peak_bytes", "alloc_peak_bytes", "reserved_peak_bytes", "device_used_bytes", "fits")
    for search, hw in ((main, (128, 160)), (typical, (96, 128))):
        slow = VariantSearch(PlanRequest(detector, custom_gpu(1.5), hw, enact_cluster_size=2, jobs=1, affine=False),
                             spec, main.trainer)
        for b in (6, 11):
            f, s = search.row(b), slow.row(b, breakdown=False)
            assert f.source == "affine" and f.image_size == s.image_size == hw
            assert {k: getattr(f, k) for k in fields} == {k: getattr(s, k) for k in fields}, (hw, b)


def test_without_shapes_the_quadratic_fit_through_three_probes_takes_over(monkeypatch):
    """The shapes' fit refused (here: the shapes hidden, so every size is taken as linear in bytes
    and DETR's (targets x targets) IoU matrix misses at batch 4): one more fake run at 5 confirms
    the older quadratic fit, and its rows still equal fake runs to the byte."""
    import enact_bench.predict.stream_fit as affine_stream
    from enact_bench.predict.search import VariantSearch

    real = affine_stream.fit_shapes
    monkeypatch.setattr(affine_stream, "fit_shapes",
                        lambda a, probes: real(a, [(ev, ops, [None] * len(sh)) for ev, ops, sh in probes]))
    req = PlanRequest("detr_tiny", custom_gpu(1.5), (96, 128), jobs=1)
    spec = variant_spec("detr", "original", 2)
    fast, slow = VariantSearch(req, spec), VariantSearch(PlanRequest("detr_tiny", custom_gpu(1.5), (96, 128), jobs=1, affine=False), spec)
    fast.row(2)
    fast.fit_stream()
    assert fast.stream is not None and fast.stream.confirmed_at == 5, fast.affine_note
    assert "refused (batch 4" in fast.affine_note and sorted(fast.measures) == [2, 3, 4, 5]
    for b in (6, 11):
        f, s = fast.row(b), slow.row(b)
        assert (f.source, f.tensor_peak_bytes, f.alloc_peak_bytes, f.reserved_peak_bytes) == \
            ("affine", s.tensor_peak_bytes, s.alloc_peak_bytes, s.reserved_peak_bytes)


def test_ddp_raises_every_rows_tensor_peak_by_the_bucket_bytes(tmp_path):
    from enact_bench.detectors import create_detector
    from enact_bench.predict.ddp_buckets import trainable_param_bytes

    base = dict(batch_sizes=(2, 3), variants=("original",), jobs=1)
    plain = plan_detector(PlanRequest("detr_tiny", custom_gpu(1.5), (96, 128), **base)).variants[0]
    ddp = plan_detector(PlanRequest("detr_tiny", custom_gpu(1.5), (96, 128), ddp=True, **base)).variants[0]
    with torch.device("meta"):
        buckets = trainable_param_bytes(create_detector("detr_tiny"))
    assert ddp.ddp_bucket_bytes == buckets > 0 and plain.ddp_bucket_bytes is None
    for p, d in zip(plain.rows, ddp.rows):
        assert d.tensor_peak_bytes - p.tensor_peak_bytes == buckets
    out = tmp_path / "ddp.json"
    r = cli.invoke(app, ["plan", "detr_tiny", "--gpu-mem", "1.5", "--image-size", SIZE, "-b", "2",
                         "--variants", "original", "--ddp", "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert d["ddp"] is True and d["variants"][0]["ddp_bucket_bytes"] == buckets
    assert "DDP rank" in r.output


def test_gpu_all_reuses_the_fake_steps_and_gives_each_gpu_its_own_plan():
    """A sweep over GPUs (two memory sizes, two compute capabilities with other cuBLAS workspaces)
    from one set of fake steps: on each GPU the largest batch and its row are those of a plan made
    for that GPU alone."""
    from enact_bench.predict.planner import plan_detector_gpus

    gpus = (custom_gpu(1.5), custom_gpu(2.0, compute_capability=(9, 0)))
    base = dict(variants=("original",), jobs=1)
    swept = plan_detector_gpus(PlanRequest("detr_tiny", gpus[0], (96, 128), **base), gpus)
    assert [p.request.gpu.name for p in swept] == [g.name for g in gpus]
    assert swept[1].variants[0].fake_runs == [2, 3, 4]  # no fake run of its own
    alone = plan_detector(PlanRequest("detr_tiny", gpus[1], (96, 128), **base)).variants[0]
    v = swept[1].variants[0]
    assert v.max_batch_size == alone.max_batch_size > swept[0].variants[0].max_batch_size
    pick = lambda plan: next((r.device_used_bytes, r.reserved_peak_bytes, r.fits) for r in plan.rows  # noqa: E731
                             if r.batch_size == plan.max_batch_size)
    assert pick(v) == pick(alone)


def test_sdpa_calls_tell_which_gpus_pick_other_kernels():
    """bf16 fused DETR: flash on sm80 and sm90 alike, but no flash (and no bf16 memory-efficient
    kernel) on sm70; the kernels recomputed from the recorded calls match the step's own count."""
    from enact_bench.predict.cuda_policy import CudaArch
    from enact_bench.predict.gpu_sweep import same_kernels
    from enact_bench.predict.search import trainer_for

    req = PlanRequest("detr_tiny", custom_gpu(1.5), (96, 128), dtype="bfloat16")
    m = trainer_for(req, variant_spec("detr", "fused", 6)).step(2)
    assert m.sdpa_calls and len(m.sdpa_calls) == sum(m.sdpa_kernels.values())
    assert same_kernels([m], CudaArch(8, 0), CudaArch(9, 0)) and same_kernels([m], CudaArch(8, 0), CudaArch(8, 6))
    assert not same_kernels([m], CudaArch(8, 0), CudaArch(7, 0))


def test_gpu_all_on_the_command_line_gives_one_plan_per_gpu():
    from enact_bench.predict.gpus import GPUS

    r = cli.invoke(app, ["plan", "detr_tiny", "--gpu", "all", "-b", "2", "--variants", "original,fused",
                         "--image-size", SIZE, "--json", "-"])
    assert r.exit_code == 0, r.output
    plans = json.loads(r.stdout)
    assert [p["gpu"]["name"] for p in plans] == list(GPUS)
    assert all(p["variants"][0]["rows"][0]["fits"] for p in plans)  # tiny: batch 2 fits everywhere
    # the context differs per GPU: so does the device memory of the same step
    assert len({p["variants"][0]["rows"][0]["device_used_mib"] for p in plans}) > 1
    assert all(g in r.stderr for g in GPUS) and "whether each batch size given fits, per GPU" in " ".join(r.stderr.split())


def test_plot_draws_the_plan_as_png_or_svg(tmp_path):
    png, svg = tmp_path / "plan.png", tmp_path / "gpus.svg"
    r = cli.invoke(app, ["plan", "detr_tiny", "--gpu-mem", "1.5", "--image-size", SIZE, "-b", "2", "-b", "3",
                         "--variants", "original", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    r = cli.invoke(app, ["plan", "detr_tiny", "--gpu", "all", "--image-size", SIZE, "-b", "2",
                         "--variants", "original", "--plot", str(svg)])
    assert r.exit_code == 0, r.output
    text = svg.read_text()
    assert "ESTIMATE" in text and "h100-80gb" in text and "rtx4090-24gb" in text
    bad = cli.invoke(app, ["plan", "detr_tiny", "--gpu", "h100", "--plot", str(tmp_path / "plan.pdf")])
    assert bad.exit_code == 2 and ".png or .svg" in bad.output and len(bad.output.strip().splitlines()) == 1
