"""What a new user meets at the command line: errors that name the option at fault, checks made
before any work, a full disk that leaves a resumable run, one-line warnings, the latest run as
the default of show/report/check, and `run --list`."""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from enact_bench.cli import app
from enact_bench.records import read_records

cli = CliRunner()
FIXTURE_RUN = Path(__file__).resolve().parents[1] / "report" / "fixtures" / "cpu_run"
TINY = '''name = "tiny"
[defaults]
detector = "detr_tiny"
image_size = "64x96"
batch_size = 1
iters = 1
warmup = 1
flops = false
cpu_threads = 1
device = "cpu"
[matrix]
enact = [false, true]
'''


def _text(result) -> str:
    return result.output  # click >= 8.2: stdout and stderr together, as a terminal shows them


def _one_line_error(result, *needles) -> str:
    assert result.exit_code == 2, _text(result)
    lines = [ln for ln in _text(result).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), _text(result)
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _copy_run(dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(FIXTURE_RUN, dst)
    return dst


# ---------------------------------------------------------------------------------------
# words
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, says", [
    (["--image-size", "0x0"], '--image-size 0x0: expected image sides >= 1 pixel, e.g. "800x1333"'),
    (["--batch-size", "-1"], "--batch-size -1: expected an integer >= 1"),
    (["--iters", "0"], "--iters 0: expected an integer >= 1"),
    (["--warmup", "0"], "--warmup 0: expected an integer >= 1"),
    (["--device", "gpu"], "--device gpu: expected auto, cpu, cuda or cuda:N"),
    (["--set", "iters=0"], "--set iters=0: expected an integer >= 1"),
    (["--image-size", "big"], '--image-size big: expected "HxW"'),
])
def test_a_bad_option_is_blamed_on_the_option_not_the_suite_file(tmp_path, args, says):
    line = _one_line_error(cli.invoke(app, ["run", "--suite", "smoke", "--out", str(tmp_path), *args]), says)
    assert "smoke.toml" not in line and "expected expected" not in line and "must be" not in line


def test_resume_with_a_suite_says_why_it_is_refused(tmp_path):
    run = _copy_run(tmp_path / "reports" / "r")
    _one_line_error(cli.invoke(app, ["run", "--resume", str(run), "--suite", "smoke"]),
                    f"--resume {run} continues that run with the suite saved in it", "drop --suite smoke")


def test_show_of_a_file_that_is_not_records_asks_for_the_run_folder(tmp_path):
    run = _copy_run(tmp_path / "reports" / "r")
    (run / "run.json").write_text(json.dumps({"run_id": "r"}, indent=1))  # valid JSON, not records
    line = _one_line_error(cli.invoke(app, ["show", str(run / "run.json")]), "is a file, not records",
                           "expected a run folder", f"try {run}")
    assert "not valid JSON" not in line


def test_check_prints_its_table_only_when_it_has_rows(tmp_path):
    run = _copy_run(tmp_path / "reports" / "r")
    base = tmp_path / "baseline.json"
    assert cli.invoke(app, ["check", str(run), "--baseline", str(base), "--update"]).exit_code == 0
    same = cli.invoke(app, ["check", str(run), "--baseline", str(base)])
    assert same.exit_code == 0, _text(same)
    assert "ok:" in same.output and "check against baseline" not in same.output and "┃" not in same.output
    listed = cli.invoke(app, ["check", str(run), "--baseline", str(base), "--all"])  # rows asked for: a table
    assert "check against baseline" in listed.output


# ---------------------------------------------------------------------------------------
# conveniences
# ---------------------------------------------------------------------------------------
def test_show_report_and_check_default_to_the_latest_run(tmp_path, monkeypatch):
    older = _copy_run(tmp_path / "reports" / "older")
    newer = _copy_run(tmp_path / "reports" / "newer")
    now = time.time()  # copytree keeps the fixture's mtime: set both, so the order is the test's own
    os.utime(older / "records.jsonl", (now - 3600, now - 3600))
    os.utime(newer / "records.jsonl", (now, now))
    (tmp_path / "reports" / "report-a-vs-b").mkdir()  # a report folder: no records, never "a run"
    monkeypatch.chdir(tmp_path)
    shown = cli.invoke(app, ["show"])
    assert shown.exit_code == 0 and "run: reports/newer (the latest under reports/)" in _text(shown), _text(shown)
    assert "baseline vs ENACT" in shown.output
    made = cli.invoke(app, ["report"])
    assert made.exit_code == 0, _text(made)
    assert (newer / "report" / "report.html").is_file() and not (older / "report").exists()
    checked = cli.invoke(app, ["check", "--baseline", str(tmp_path / "b.json"), "--update"])
    assert checked.exit_code == 0 and "run: reports/newer" in _text(checked), _text(checked)


def test_without_any_run_the_default_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line_error(cli.invoke(app, ["show"]), "no run folder given, and no run under reports/")


def test_run_list_prints_the_expanded_cases_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli.invoke(app, ["run", "--suite", "smoke", "--list", "--set", "cpu_threads=1"])
    assert res.exit_code == 0, _text(res)
    for cid in ("detr_tiny-base-train-b1-256x320", "detr_tiny-enact-infer-b2-128x160"):
        assert cid in res.output
    assert "256x320" in res.output and "infer" in res.output and "first, the full-size estimate: detr_r50" in res.output
    assert not (tmp_path / "reports").exists()


# ---------------------------------------------------------------------------------------
# before the work
# ---------------------------------------------------------------------------------------
def test_a_checkpoint_of_another_architecture_fails_once_before_any_case(tmp_path, monkeypatch):
    import torch

    import enact_bench.commands.run as run_cmd
    from enact_bench.detectors import create_detector

    wrong = tmp_path / "wide.pth"
    torch.save(create_detector("detr_tiny", hidden_dim=32, nheads=2).state_dict(), wrong)
    monkeypatch.setattr(run_cmd, "run_suite", lambda *a, **k: pytest.fail("a case ran"))
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    t0 = time.monotonic()
    _one_line_error(cli.invoke(app, ["run", "--suite", str(suite), "--out", str(tmp_path / "out"),
                                     "--checkpoint", f"detr_tiny={wrong}"]),
                    f"checkpoint {wrong} does not fit detr_tiny", "shape mismatch")
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "out").exists()


def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path, monkeypatch):
    import enact_bench.run.suite_run as suite_run

    real_append = suite_run.append_record
    calls = []

    def append_then_fill_the_disk(path, rec):
        calls.append(rec.case_id)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_append(path, rec)

    monkeypatch.setattr(suite_run, "append_record", append_then_fill_the_disk)
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    out = tmp_path / "out"
    run_dir = out / "full"
    res = cli.invoke(app, ["run", "--suite", str(suite), "--out", str(out), "--run-id", "full", "--inline"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == res.output.strip().splitlines()[-1], res.output  # the last line
    assert f"cannot write {run_dir / 'records.jsonl'}: No space left on device" in errors[0]
    assert f"enact-bench run --resume {run_dir}" in errors[0]
    assert [r.case_id for r in read_records(run_dir)] == ["detr_tiny-base-train-b1-64x96"]
    monkeypatch.setattr(suite_run, "append_record", real_append)  # space freed
    res = cli.invoke(app, ["run", "--resume", str(run_dir), "--inline", "--no-report"])
    assert res.exit_code == 0, _text(res)
    assert [(r.case_id, r.status) for r in read_records(run_dir)] == [
        ("detr_tiny-base-train-b1-64x96", "ok"), ("detr_tiny-enact-train-b1-64x96", "ok")]


def test_a_full_disk_under_report_out_is_one_line(tmp_path, monkeypatch):
    import enact_bench.report.build as build

    run = _copy_run(tmp_path / "reports" / "r")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "rep" / "report.md"))

    monkeypatch.setattr(build, "write", full)  # report.md and report.html, after the CSV files and plots
    _one_line_error(cli.invoke(app, ["report", str(run), "--out", str(tmp_path / "rep")]),
                    f"--out {tmp_path / 'rep'}: cannot write", "No space left on device")


def test_a_torn_last_line_warns_in_one_plain_line(tmp_path):
    run = _copy_run(tmp_path / "reports" / "r")
    with open(run / "records.jsonl", "a") as f:
        f.write('{"schema": 1, "run_id": "r", "case')  # a run killed mid-write
    res = cli.invoke(app, ["show", str(run)])
    assert res.exit_code == 0
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("warning: ") and "incomplete last record" in err[0], err
    assert "UserWarning" not in res.stderr and "warnings.warn" not in res.stderr
