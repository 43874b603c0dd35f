"""The CLI end to end with CliRunner: a smoke-sized run (inline), show, resume, list, env, errors."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from enact_bench.cli import app

cli = CliRunner()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    args = ["run", "--suite", "smoke", "--inline", "--out", str(out), "--image-size", "64x96", "--batch-size", "1",
            "--iters", "1", "--warmup", "1", "--set", "mode=train", "--set", "flops=false",
            "--set", "cpu_threads=1", "--set", "overrides={}", "--run-id", "t"]
    result = cli.invoke(app, args)
    return out / "t", result


def test_run_writes_records_suite_copy_and_pair_table(smoke_run):
    run_dir, result = smoke_run
    assert result.exit_code == 0, result.output
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["case_id"] for r in recs] == ["detr_tiny-base-train-b1-64x96", "detr_tiny-enact-train-b1-64x96"]
    assert all(r["status"] == "ok" and r["run_id"] == "t" and r["suite"] == "smoke" for r in recs)
    assert (run_dir / "suite.toml").read_text().startswith('name = "smoke"')
    assert "baseline vs ENACT" in result.output and "detr_tiny-enact-train-b1-64x96" in result.output


def test_show_and_resume(smoke_run):
    run_dir, _ = smoke_run
    shown = cli.invoke(app, ["show", str(run_dir)])
    assert shown.exit_code == 0 and "baseline vs ENACT" in shown.output
    resumed = cli.invoke(app, ["run", "--resume", str(run_dir), "--inline"])
    assert resumed.exit_code == 0 and "2 case(s) already ok were skipped" in resumed.output
    assert len((run_dir / "records.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("args, needle", [
    (["run", "--suite", "no-such-suite"], "unknown suite 'no-such-suite'"),
    (["run", "--suite", "smoke", "--set", "speed=3"], "unknown key"),
    (["run", "--suite", "smoke", "--detector", "detr_giant"], "detr_giant"),
    (["run", "--suite", "smoke", "--image-size", "big"], "HxW"),
    (["run"], "--suite"),
    (["show", "/nonexistent/run"], "no records found"),
])
def test_user_errors_are_one_line_without_traceback(args, needle):
    result = cli.invoke(app, args)
    assert result.exit_code == 2
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert needle in text and "Traceback" not in text
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_list_and_env():
    listed = cli.invoke(app, ["list"])
    assert listed.exit_code == 0
    for name in ("smoke", "synthetic-detr", "ci", "detr_tiny", "detr_r50", "synthetic"):
        assert name in listed.output
    from enact_bench.predict.gpus import GPUS
    assert "GPUs" in listed.output and all(g in listed.output for g in GPUS)  # plan --gpu's names
    assert "81,121" in listed.output  # the H100's usable memory (CUDA's total)
    env = cli.invoke(app, ["env", "--device", "cpu"])
    assert env.exit_code == 0 and "torchvision" in env.output and "device_kind" in env.output


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_paths_that_are_files_are_one_line_errors(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    _one_line_error(cli.invoke(app, ["make-toy-coco", str(f)]), "is a file", "expected a folder")
    _one_line_error(cli.invoke(app, ["make-toy-coco", str(f / "sub")]), "is a file", "expected a folder")
    _one_line_error(cli.invoke(app, ["run", "--suite", "smoke", "--out", str(f), "--inline"]),
                    "--out", "is a file", "expected a folder")
    _one_line_error(cli.invoke(app, ["run", "--suite", "smoke", "--out", str(f / "deeper"), "--inline"]),
                    "--out", "is a file")
    _one_line_error(cli.invoke(app, ["run", "--suite", "smoke", "--coco-root", str(f)]), "--coco-root", "not a folder")
    _one_line_error(cli.invoke(app, ["report", str(f), "--out", str(f)]), "--out", "is a file")
    _one_line_error(cli.invoke(app, ["show", str(f)]), f"{f} is a file, not records", "expected a run folder")
    _one_line_error(cli.invoke(app, ["check", str(tmp_path), "--baseline", str(tmp_path)]), "--baseline", "is a folder")
    _one_line_error(cli.invoke(app, ["check", str(tmp_path), "--baseline", "no-such-baseline"]), "unknown baseline")


def test_bad_options_are_one_line_errors(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\n[defaults]\ndetector = "detr_tiny"\nimage_size = "64x64"\n')
    text = tmp_path / "weights.pth"
    text.write_text("not a checkpoint\n")
    out = str(tmp_path / "o")
    cases = [
        (["--set", "foo"], "expected key=value"),
        (["--set", "iters=abc"], "expected an integer"),
        (["--image-size", "0x5"], '--image-size 0x5: expected image sides >= 1 pixel, e.g. "800x1333"'),
        (["--case-timeout", "-1"], "expected seconds > 0"),
        (["--run-id", "a/b"], "no path separators"),
        (["--set", "overrides.nonsense=1"], "unknown key(s) 'nonsense' for detector 'detr_tiny'"),
        (["--checkpoint", f"detr_tiny={text}"], "not a PyTorch checkpoint"),
        (["--set", "evaluate=coco"], "needs data = 'coco' or 'toy'"),
        (["--set", "fake=true", "--set", "enact=true"], "--set enact_config.cluster_size=6"),
    ]
    for extra, needle in cases:
        _one_line_error(cli.invoke(app, ["run", "--suite", str(suite), "--out", out, "--inline", *extra]), needle)
    # a message that names TOML tables keeps its brackets (rich markup would eat them)
    empty = tmp_path / "empty"
    empty.write_text("")
    _one_line_error(cli.invoke(app, ["run", "--suite", str(empty), "--out", out]), "[defaults] or [matrix]")
    _one_line_error(cli.invoke(app, ["run", "--suite", "no-such-suite"]), "unknown suite 'no-such-suite'", "smoke")


def test_piped_output_has_a_line_when_each_case_starts_and_ends(smoke_run):
    # fault 10: in CI logs (not a TTY) a long case used to run in silence until it ended
    _, result = smoke_run
    lines = result.output.splitlines()
    starts = [i for i, line in enumerate(lines) if "start detr_tiny-" in line]
    ends = [i for i, line in enumerate(lines) if line.lstrip("[0123456789/] ").startswith("ok detr_tiny-")]
    assert len(starts) == len(ends) == 2, result.output
    assert starts[0] < ends[0] < starts[1] < ends[1]
    assert lines[starts[0]].startswith("[1/2]") and lines[ends[1]].startswith("[2/2]")
    end = lines[ends[0]]
    assert "MiB cpu_tracked" in end and "ms/step" in end and end.rstrip().endswith(" s)"), end


def test_device_cuda_without_a_gpu_fails_before_any_work(tmp_path, monkeypatch):
    # --device cuda on a machine without a GPU used to run the 20 s estimate, skip every case
    # and write an empty report before failing: now one line, exit 2, and no run folder at all
    import enact_bench.predict.planner as planner

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(planner, "plan_detector", lambda req: pytest.fail("the estimate ran"))
    res = cli.invoke(app, ["run", "--suite", "smoke", "--device", "cuda", "--out", str(tmp_path / "out"),
                           "--iters", "1", "--warmup", "1"])
    _one_line_error(res, "--device cuda: no CUDA device is available here", "--device cpu")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
