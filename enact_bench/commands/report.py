"""`enact-bench report RUN_DIR [RUN_DIR ...] [--out DIR]`: tables, plots, report.md/.html, CSV."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from enact_bench.commands import output_folder, run_dirs_or_latest, user_errors, write_error_text
from enact_bench.errors import UserInputError


def report_command(run_dirs: list[str | Path], out: str | Path | None = None) -> dict[str, Path]:
    """Plain body: build the report of `run_dirs` into `out` (default: <run>/report, or
    <parent>/report-<a>-vs-<b> for several). Returns {file name: path}. Never imports torch."""
    from enact_bench.report import build_report

    if not run_dirs:
        raise UserInputError("give at least one run folder (reports/<run_id>) or records.jsonl file")
    if out is not None:
        out = output_folder(out, "--out")
    try:
        return build_report(list(run_dirs), out)
    except (FileNotFoundError, ValueError) as e:
        raise UserInputError(str(e)) from None
    except OSError as e:  # a full or read-only disk under the output folder
        where = f"--out {out}" if out is not None else "report"
        raise UserInputError(f"{where}: {write_error_text(e)}") from None


def print_written(paths: dict[str, Path]) -> None:
    from enact_bench.console import console

    folder = next(iter(paths.values())).parent
    plots = sum(1 for n in paths if n.endswith(".png"))
    console.print(f"report: {paths['report.html']} (self-contained), {paths['report.md']}, "
                  f"{plots} plots (PNG + SVG) and {sum(1 for n in paths if n.endswith('.csv'))} CSV files "
                  f"in {folder}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("report")
    @user_errors
    def report(
        run_dirs: Optional[list[Path]] = typer.Argument(None, help="run folders (reports/<run_id>) or records.jsonl "
                                                        "files (default: the latest run under reports/)"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default: RUN_DIR/report; "
                                           "for several runs <parent>/report-<a>-vs-<b>)"),
    ) -> None:
        """Tables and plots from records: report.md, a self-contained report.html, PNG/SVG plots, CSV."""
        print_written(report_command(run_dirs_or_latest(run_dirs), out))
