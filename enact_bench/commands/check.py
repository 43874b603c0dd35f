"""`enact-bench check [RUN_DIR] --baseline FILE [--update]`: the CI memory-regression gate.

Exit 0: nothing regressed; 1: a metric regressed (or a case failed or is missing); 2: the run and
the baseline are not comparable (or bad input). The body is enact_bench.regress.run_check.
Without RUN_DIR, the latest run under reports/ is checked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from enact_bench.commands import run_dirs_or_latest, user_errors

VERDICT_STYLE = {"regressed": "bold red", "changed": "bold red", "missing": "bold red", "failed": "bold red",
                 "improved": "green", "within noise": "yellow", "same": "", "new": "cyan"}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.6g}"
    if isinstance(v, list):
        return ",".join(map(str, v)) or "(none)"
    return str(v)


def check_table(comparison, show_all: bool = False):
    """The rows worth reading (all of them with `show_all`), or None when there are none."""
    from rich.table import Table

    rows = [r for r in comparison.rows if show_all or r.verdict != "same"]
    if not rows:
        return None

    t = Table(title=f"check against baseline ({comparison.baseline.get('suite')}, "
                    f"{comparison.baseline.get('device_kind')}, torch {comparison.baseline.get('torch')})")
    for col in ("case", "metric", "baseline", "current", "change", "verdict"):
        t.add_column(col, justify="right" if col in ("baseline", "current", "change") else "left")
    for r in rows:
        style = VERDICT_STYLE.get(r.verdict, "")
        verdict = f"[{style}]{r.verdict}[/]" if style else r.verdict
        if r.note and r.verdict != "same":
            verdict += f" [dim]({r.note})[/]"
        t.add_row(r.case_id, r.metric, _fmt(r.baseline), _fmt(r.current), r.change, verdict)
    return t


def register(app: typer.Typer) -> None:
    @app.command("check")
    @user_errors
    def check(
        run_dirs: Optional[list[Path]] = typer.Argument(None, help="reports/<run_id> folder(s); several = repeats "
                                                        "(for --update); default: the latest run under reports/"),
        baseline: str = typer.Option(..., "--baseline", "-b", help="baseline JSON path, or a shipped baseline's "
                                      "name (e.g. ci-cpu; see `enact-bench list`)"),
        update: bool = typer.Option(False, "--update", help="write the run(s) as the new baseline instead of checking"),
        show_all: bool = typer.Option(False, "--all", help="also list the metrics that match exactly"),
    ) -> None:
        """Compare a run with a baseline: exit 0 ok, 1 regression, 2 not comparable."""
        from enact_bench.console import console, err_console
        from enact_bench.regress import check_update_target, find_baseline, run_check

        path = find_baseline(baseline)
        if update:
            check_update_target(path, baseline)
        result = run_check(run_dirs_or_latest(run_dirs), path, update=update)
        table = check_table(result.comparison, show_all=show_all) if result.comparison is not None else None
        if table is not None:
            console.print(table)
        colour = {0: "green", 1: "red", 2: "yellow"}[result.exit_code]
        (console if result.exit_code == 0 else err_console).print(
            f"[{colour}]{result.reason}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(result.exit_code)
