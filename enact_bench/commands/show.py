"""`enact-bench show RUN_DIR`: the summary tables of a finished (or interrupted) run."""
from __future__ import annotations

from pathlib import Path

import typer

from enact_bench.commands import user_errors


def load_run_records(run_dir: str | Path):
    """Plain body: the records of RUN_DIR (or of a records.jsonl path)."""
    from enact_bench.records import read_records

    return read_records(run_dir)


def register(app: typer.Typer) -> None:
    @app.command("show")
    @user_errors
    def show(run_dir: Path = typer.Argument(..., help="reports/<run_id> folder")) -> None:
        """Summary table of a run: every case, then each baseline next to its ENACT variant."""
        from enact_bench.console import print_summary

        print_summary(load_run_records(run_dir))
