"""`enact-bench show [RUN_DIR]`: the summary tables of a finished (or interrupted) run; without
RUN_DIR, of the latest run under reports/."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from enact_bench.commands import run_dirs_or_latest, user_errors
from enact_bench.errors import UserInputError


def load_run_records(run_dir: str | Path):
    """Plain body: the records of RUN_DIR (or of a records.jsonl path)."""
    from enact_bench.records import read_records

    records = read_records(run_dir)
    if not records:
        raise UserInputError(f"no records in {run_dir} (expected a run folder written by `enact-bench run`, "
                             "or its records.jsonl, with at least one finished case)")
    return records


def register(app: typer.Typer) -> None:
    @app.command("show")
    @user_errors
    def show(run_dir: Optional[Path] = typer.Argument(None, help="reports/<run_id> folder (default: the latest "
                                                      "run under reports/)")) -> None:
        """Summary table of a run: every case, then each baseline next to its ENACT variant."""
        from enact_bench.console import print_summary

        (run_dir,) = run_dirs_or_latest([run_dir] if run_dir else None)
        print_summary(load_run_records(run_dir))
