"""`enact-bench report` through Typer: writes the report, and bad input is one clear line."""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from enact_bench.cli import app

FIX = Path(__file__).parent / "fixtures"


def test_report_command_writes_report(tmp_path):
    res = CliRunner().invoke(app, ["report", str(FIX / "cpu_run"), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "report.html").stat().st_size > 0
    assert (tmp_path / "memory_per_detector.png").stat().st_size > 0
    assert "report.html" in res.output


def test_report_command_names_the_missing_records(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path / "no_such_run")])
    assert res.exit_code == 2
    assert "no records found at" in res.output


def test_run_hook_never_fails_the_run(tmp_path, capsys):
    from enact_bench.commands.run import _report_hook

    (tmp_path / "records.jsonl").write_text("")   # a run whose every case was lost
    _report_hook(tmp_path)                        # prints a warning, raises nothing
    assert not (tmp_path / "report").exists()
    assert "report not written" in capsys.readouterr().err
