"""`enact-bench run`: expand a suite, run its cases, write reports/<run_id>/, print the summary."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from enact_bench.suite.edits import CaseEdits
from enact_bench.commands import output_folder, user_errors
from enact_bench.errors import SuiteError, UserInputError
from enact_bench.run.run_dir import edit_suite, load_run_suite, prepare_run
from enact_bench.run.suite_run import RunResult, run_suite
from enact_bench.suite.load import load_suite, parse_set_option
from enact_bench.suite.plan_spec import PlanSpec


# the command-line option that sets each case key (flag errors name the flag, not the suite file)
FLAGS = {"detector": "--detector", "device": "--device", "batch_size": "--batch-size",
         "image_size": "--image-size", "iters": "--iters", "warmup": "--warmup", "launcher": "--launcher",
         "nproc": "--nproc"}


def check_flag(label: str, key: str, value: Any) -> None:
    """A command-line value checked as the suite key it sets; the error names the option
    (`label`, e.g. "--image-size 0x0" or "--set iters=0"), not the suite file."""
    from enact_bench.suite.checks import check_value

    try:
        check_value(key, value, label)
    except SuiteError as e:
        text = str(e)
        prefix = f"{label}: {key} = {value!r}: "
        raise UserInputError(f"{label}: {text[len(prefix):]}" if text.startswith(prefix) else text) from None


def cli_overrides(*, detector: list[str] | None = None, device: str | None = None,
                  batch_size: int | None = None, image_size: str | None = None, iters: int | None = None,
                  warmup: int | None = None, sets: list[str] | None = None, launcher: str | None = None,
                  nproc: int | None = None) -> list[tuple[str, list[Any]]]:
    """Command-line options -> (key, values) overrides, applied to every case of the suite. Each
    value is checked here, so that a bad one is an error naming its option."""
    out: list[tuple[str, list[Any]]] = []
    if nproc is not None and launcher is None:
        launcher = "torchrun"  # --nproc N alone means N DDP ranks
    if detector:
        for d in detector:
            check_flag(f"--detector {d}", "detector", d)
        out.append(("detector", list(detector)))
    for key, value in (("device", device), ("batch_size", batch_size), ("image_size", image_size),
                       ("iters", iters), ("warmup", warmup), ("launcher", launcher), ("nproc", nproc)):
        if value is not None:
            check_flag(f"{FLAGS[key]} {value}", key, value)
            out.append((key, [value]))
    for text in sets or []:
        key, value = parse_set_option(text)
        if "." not in key:  # a table entry (overrides.x) is checked with its detector, on load
            check_flag(f"--set {text}", key, value)
        out.append((key, [value]))
    return out


def _device_flag(overrides) -> str | None:
    return next((vals[0] for key, vals in overrides or [] if key == "device"), None)


def load_command_suite(suite: str | None, *, overrides=None, resume: str | Path | None = None,
                       edits: CaseEdits | None = None):
    """The suite a run would run: `suite` with the command line's overrides and case edits, or the
    suite saved in the `resume` folder. Returns (suite, run.json of the resumed run or None)."""
    edits = edits or CaseEdits()
    if resume:
        if suite:
            raise UserInputError(f"--resume {resume} continues that run with the suite saved in it "
                                 f"({Path(resume) / 'suite.toml'}); drop --suite {suite}, or give --suite alone "
                                 "to start a new run")
        if overrides or not edits.empty:
            raise UserInputError("--resume re-runs the suite as it was saved; do not combine it with overrides")
        return load_run_suite(resume)
    if not suite:
        raise UserInputError("give --suite NAME|PATH (see `enact-bench list`) or --resume RUN_DIR")
    return edit_suite(load_suite(suite, overrides), edits), None


def prepare_command(suite: str | None, *, out: str | Path = "reports", overrides=None,
                    resume: str | Path | None = None, run_id: str | None = None, edits: CaseEdits | None = None):
    """Load the suite (or the resumed run's) and create/locate the run folder.
    Returns (suite, run_dir, run_id). All user-input errors surface here, before any estimate or
    case runs: options, the output folder, a device this machine lacks, a checkpoint that does
    not fit its detector. `edits`: --checkpoint / --coco-root / --max-images (saved in run.json
    for --resume)."""
    from enact_bench.run.preflight import preflight

    if not resume:
        out = output_folder(out, "--out")
        if run_id is not None and (not run_id or run_id in (".", "..") or "/" in run_id or "\\" in run_id):
            raise UserInputError(f"--run-id {run_id!r}: expected a folder name (no path separators); "
                                 "use --out for the parent folder")
    s, meta = load_command_suite(suite, overrides=overrides, resume=resume, edits=edits)
    preflight(s, _device_flag(overrides))
    if resume:
        return s, Path(resume), meta["run_id"]
    try:
        run_dir, rid = prepare_run(s, out, overrides, run_id, case_edits=(edits or CaseEdits()).to_json())
    except OSError as e:
        raise UserInputError(f"--out {out}: cannot create the run folder there ({e.strerror or e})") from None
    return s, run_dir, rid


def check_case_timeout(case_timeout_s: float | None) -> None:
    if case_timeout_s is not None and not case_timeout_s > 0:
        raise UserInputError(f"--case-timeout {case_timeout_s}: expected seconds > 0")


def run_command(suite: str | None, *, out: str | Path = "reports", overrides=None, inline: bool = False,
                resume: str | Path | None = None, run_id: str | None = None, case_timeout_s: float | None = None,
                on_start=None, on_end=None, edits: CaseEdits | None = None) -> RunResult:
    """Plain body of `enact-bench run` (no printing). Returns the run's result."""
    check_case_timeout(case_timeout_s)
    s, run_dir, rid = prepare_command(suite, out=out, overrides=overrides, resume=resume, run_id=run_id,
                                      edits=edits)
    return run_suite(s, run_dir, rid, inline=inline, on_start=on_start, on_end=on_end, timeout_s=case_timeout_s)


def register(app: typer.Typer) -> None:
    @app.command("run")
    @user_errors
    def run(
        suite: Optional[str] = typer.Option(None, "--suite", "-s", help="shipped suite name or path to a .toml"),
        device: Optional[str] = typer.Option(None, help="auto | cuda | cuda:N | cpu (overrides the suite)"),
        out: Path = typer.Option(Path("reports"), help="folder that receives <run_id>/"),
        detector: Optional[list[str]] = typer.Option(None, help="detector(s) to run instead of the suite's"),
        batch_size: Optional[int] = typer.Option(None, help="batch size for every case"),
        image_size: Optional[str] = typer.Option(None, help='HxW (e.g. 800x1333) or "coco"'),
        iters: Optional[int] = typer.Option(None, help="timed iterations per case"),
        warmup: Optional[int] = typer.Option(None, help="warm-up iterations per case (>= 1)"),
        launcher: Optional[str] = typer.Option(None, help='process | torchrun: "torchrun" runs each case as '
                                               "DistributedDataParallel ranks (docs/harness.md)"),
        nproc: Optional[int] = typer.Option(None, help="torchrun: ranks on this node (one GPU each on CUDA)"),
        set_: Optional[list[str]] = typer.Option(None, "--set", help="key=value for any case key (TOML value); "
                                                 "dotted keys set one table entry, e.g. overrides.num_queries=50"),
        inline: bool = typer.Option(False, help="run cases in this process (debugging) instead of subprocesses"),
        resume: Optional[Path] = typer.Option(None, help="continue RUN_DIR: skip its cases already ok"),
        run_id: Optional[str] = typer.Option(None, help="name of the run folder (default <suite>-<UTC time>)"),
        case_timeout: Optional[float] = typer.Option(None, help="seconds before a case's subprocess is stopped"),
        report: bool = typer.Option(True, "--report/--no-report",
                                    help="write RUN_DIR/report (tables, plots, report.html) at the end"),
        checkpoint: Optional[list[str]] = typer.Option(None, help="DETECTOR=PATH or DETECTOR+enact=PATH: weights "
                                                       "for that variant (repeatable); the record gets its sha256"),
        coco_root: Optional[Path] = typer.Option(None, help="COCO 2017 folder (annotations/, train2017/, "
                                                 "val2017/); default $ENACT_BENCH_COCO"),
        max_images: Optional[int] = typer.Option(None, help="coco/toy data: the first N images of each split"),
        trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint",
                                              help="read checkpoints with the full unpickler, which can run code: "
                                              "only for files from a source you trust (default: "
                                              "torch.load(weights_only=True), enough for the originals' files)"),
        list_only: bool = typer.Option(False, "--list", help="print the suite's cases (with the options "
                                       "applied) and exit, without running them"),
    ) -> None:
        """Run a suite: one record per case in OUT/<run_id>/records.jsonl, then the summary."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from enact_bench.commands import write_error_text
        from enact_bench.console import console, print_summary
        from enact_bench.records import read_records

        overrides = cli_overrides(detector=detector, device=device, batch_size=batch_size, image_size=image_size,
                                  iters=iters, warmup=warmup, sets=set_, launcher=launcher, nproc=nproc)
        if trust_checkpoint:
            overrides.append(("trust_checkpoint", [True]))
        if coco_root is not None and not coco_root.expanduser().is_dir():
            raise UserInputError(f"--coco-root {coco_root}: not a folder; expected the COCO 2017 folder "
                                 "(annotations/, train2017/, val2017/)")
        edits = CaseEdits.from_options(checkpoint, coco_root, max_images)
        if list_only:
            s, _ = load_command_suite(suite, overrides=overrides, resume=resume, edits=edits)
            print_case_list(s)
            return
        check_case_timeout(case_timeout)
        s, run_dir, rid = prepare_command(suite, out=out, overrides=overrides, resume=resume, run_id=run_id,
                                          edits=edits)
        console.print(f"suite [bold]{s.name}[/]: {len(s.cases)} case(s) -> {run_dir}", highlight=False)
        console.print(what_the_figures_are(s), highlight=False, soft_wrap=True)
        try:
            if s.plan:
                _plan_first(s.plan, run_dir)
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console, transient=False) as progress:
                task = progress.add_task("starting", total=len(s.cases))

                piped = not console.is_terminal  # CI logs: a line per case start, the bar is not drawn

                def on_start(i, n, case):
                    progress.update(task, total=n, description=f"{case.case_id}")  # n: cases still to run
                    if piped:
                        progress.console.print(f"[{i + 1}/{n}]   start {case.case_id}", highlight=False)

                def on_end(i, n, rec):
                    progress.console.print(f"[{i + 1}/{n}] " + end_line(rec), highlight=False)
                    progress.advance(task)

                result = run_suite(s, run_dir, rid, inline=inline, on_start=on_start, on_end=on_end,
                                   timeout_s=case_timeout)
                progress.update(task, description="done" if not result.interrupted else "interrupted")
        except OSError as e:  # a full disk: what was written stays, and the folder resumes
            raise UserInputError(f"{write_error_text(e)}; the finished cases are kept in {run_dir}: free some "
                                 f"space, then continue with `enact-bench run --resume {run_dir}`") from None
        if result.recovered:
            console.print(f"resumed: {len(result.recovered)} case(s) had finished before the run was stopped; "
                          "their records were kept", highlight=False)
        if result.skipped_ok:
            console.print(f"resumed: {len(result.skipped_ok)} case(s) already ok were skipped")
        records_path = result.run_dir / "records.jsonl"
        if records_path.exists():
            print_summary(read_records(records_path))
        console.print(f"records: {records_path}")
        if report and records_path.exists():
            _report_hook(result.run_dir)
        if result.interrupted:
            console.print(f"[yellow]interrupted[/] ({result.signal_name}): finished records kept; continue with "
                          f"`enact-bench run --resume {result.run_dir}`", highlight=False)
            raise typer.Exit(128 + result.exit_signal)
        if result.nothing_measured:
            from enact_bench.console import err_console
            err_console.print(f"[red]{result.nothing_measured}[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        if any(r.status == "error" for r in result.records):
            raise typer.Exit(1)


def what_the_figures_are(suite) -> str:
    """One sentence, printed first: which figures of the run are estimates and which are measured."""
    real = [c for c in suite.cases if not c.fake]
    fake = len(suite.cases) - len(real)
    parts = []
    if suite.plan:
        parts.append(f"the first table is an ESTIMATE for the full-size {', '.join(suite.plan.detectors)} on a "
                     f"{suite.plan.gpu} GPU (computed here from fake tensors; nothing runs on a GPU)")
    if real:
        devices = " and ".join(dict.fromkeys(c.device for c in real))
        parts.append(f"the {len(real)} case(s) after it are MEASURED on this machine's {devices}"
                     if suite.plan else f"its {len(real)} case(s) are MEASURED on this machine's {devices}")
    if fake:
        parts.append(f"{fake} fake = true case(s) are ESTIMATES (FakeTensorMode: shapes only, not timed)")
    return "What the figures are: " + "; ".join(parts) + "."


def print_case_list(suite) -> None:
    """`run --list`: the expanded cases, without running anything or creating a run folder."""
    from rich.table import Table

    from enact_bench.console import console

    t = Table(title=f"suite {suite.name}: {len(suite.cases)} case(s)")
    for col in ("case id", "detector", "variant", "mode", "batch", "size", "device", "warmup+iters"):
        t.add_column(col, justify="right" if col in ("batch", "warmup+iters") else "left")
    for c in suite.cases:
        size = "x".join(map(str, c.image_size)) if c.image_size else (c.image_size_dist or c.data)
        variant = ("ENACT" if c.enact else "baseline") + (" (estimate)" if c.fake else "")
        t.add_row(c.case_id, c.detector, variant, c.mode, str(c.batch_size), size, c.device,
                  f"{c.warmup}+{c.iters}")
    if suite.description:
        console.print(f"{suite.name}: {suite.description}", highlight=False, soft_wrap=True)
    if suite.plan:
        p = suite.plan
        console.print(f"first, the full-size estimate: {', '.join(p.detectors)} at "
                      f"{'x'.join(map(str, p.image_size))} on {p.gpu} ({', '.join(p.variants)})",
                      highlight=False)
    console.print(t)


def _plan_first(plan_cfg: PlanSpec, run_dir: Path) -> None:
    """A suite's [plan] (checked when the suite loaded): the full-size estimates, printed before
    the measured cases and kept in RUN_DIR/plan.json (the report shows them, labelled as
    estimates). Reused on --resume."""
    import json

    from enact_bench.commands.plan import plan_summary_table
    from enact_bench.console import console, err_console
    from enact_bench.predict.gpus import get_gpu
    from enact_bench.predict.plan import PlanRequest
    from enact_bench.predict.planner import plan_detector

    path = Path(run_dir) / "plan.json"
    if path.is_file():
        plans = json.loads(path.read_text())
    else:
        plans = []
        try:
            for det in plan_cfg.detectors:
                req = PlanRequest(det, get_gpu(plan_cfg.gpu), plan_cfg.image_size,
                                  enact_cluster_size=plan_cfg.enact_cluster_size, variants=plan_cfg.variants)
                plans.append(plan_detector(req).as_dict())
        except Exception as e:  # noqa: BLE001 -- the estimate is an extra: the measured cases still run
            err_console.print(f"[yellow]full-size estimate failed[/]: {type(e).__name__}: {e}", highlight=False)
            return
        path.write_text(json.dumps(plans, indent=1))
    for p in plans:
        console.print(plan_summary_table(p))


def end_line(rec) -> str:
    """One line when a case ends: status, case id, its memory and median step, seconds."""
    from enact_bench.summary import memory_of, time_spread

    colour = {"ok": "green", "oom": "yellow", "skipped": "yellow"}.get(rec.status, "red")
    figures = []
    mem, kind = memory_of(rec)
    if mem is not None:
        figures.append(f"{mem:,.1f} MiB {kind}")
    if rec.metrics.get("step_ms_p50") is not None:
        lo, hi = time_spread(rec)
        spread = f" (p10-p90 {lo:,.0f}-{hi:,.0f})" if lo is not None and hi is not None else ""
        figures.append(f"{rec.metrics['step_ms_p50']:,.1f} ms/step{spread}")
    first = (rec.error or "").splitlines()[0] if rec.error else ""
    seconds = f"{rec.duration_s:.1f} s" if rec.duration_s is not None else "? s"
    return (f"[{colour}]{rec.status:>7}[/] {rec.case_id} ({', '.join(figures + [seconds])})"
            + (f": {first}" if first else ""))


def _report_hook(run_dir: Path) -> None:
    """Build RUN_DIR/report after a run. A failing report never fails the run: its records are
    safe, and `enact-bench report RUN_DIR` can rebuild it."""
    from enact_bench.commands.report import print_written, report_command
    from enact_bench.console import err_console

    try:
        print_written(report_command([run_dir]))
    except Exception as e:  # noqa: BLE001 -- the run's result stands; say how to retry
        err_console.print(f"[yellow]report not written[/]: {type(e).__name__}: {e}; "
                          f"retry with `enact-bench report {run_dir}`", highlight=False)
