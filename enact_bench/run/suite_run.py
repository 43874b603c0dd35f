"""A suite: every case not yet ok in RUN_DIR/records.jsonl, one after another, each record
appended as soon as its case ends (a crash loses one case, not the run).

Ctrl-C (SIGINT) and SIGTERM both stop the run the same way: the case in flight has its whole
process group ended (run/launch.py), the finished records stay, and the result says
`interrupted` (with the signal's name), so the command writes the partial report and exits
128 + the signal number. A launcher killed outright (SIGKILL) takes its case process with it
(enact_bench.lifeline); a record the case process had already written (cases/<id>.record.json)
but the launcher had not yet appended is appended by the next `--resume`, which then skips that
case (`recover_finished`).
"""
from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from enact_bench.records import Record, append_record, latest_by_case, read_records
from enact_bench.run import launch, torchrun
from enact_bench.suite.case import Case
from enact_bench.suite.load import Suite


@dataclass
class RunResult:
    run_dir: Path
    run_id: str
    records: list[Record] = field(default_factory=list)
    skipped_ok: list[str] = field(default_factory=list)  # case_ids already ok (resume)
    recovered: list[str] = field(default_factory=list)  # case_ids whose finished record was appended late
    interrupted: bool = False
    signal_name: str | None = None  # "SIGINT" or "SIGTERM" when interrupted

    @property
    def exit_signal(self) -> int:
        return signal.Signals[self.signal_name or "SIGINT"].value

    @property
    def nothing_measured(self) -> str | None:
        """One line saying why, when cases ran and none of them measured anything (every one
        skipped or failed: e.g. --device cuda on a machine without a GPU); else None."""
        if not self.records or any(r.status in ("ok", "oom") for r in self.records):
            return None
        counts = Counter(r.status for r in self.records)
        first = next((r.error for r in self.records if r.error), "") or ""
        what = ", ".join(f"{n} {status}" for status, n in counts.items())
        return f"nothing was measured: {what} of {len(self.records)} case(s)" + (
            f" (first: {first.splitlines()[0]})" if first else "")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread while a suite runs, so it stops like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While inside, SIGTERM raises Terminated (a KeyboardInterrupt); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def needs_missing_cuda(case: Case) -> bool:
    import torch
    return case.device.startswith("cuda") and not torch.cuda.is_available()


def pick_launcher(case: Case, inline: bool) -> launch.Launcher:
    """torchrun for `launcher = "torchrun"` (DDP ranks; --inline too, a rank needs its own
    process); in this process for --inline and for a case that will be skipped (no subprocess
    needed); else a fresh subprocess."""
    if case.launcher == "torchrun":
        return torchrun.run_case_torchrun
    return launch.launch_inline if inline or needs_missing_cuda(case) else launch.launch_subprocess


def recover_finished(suite: Suite, run_dir: Path) -> list[Record]:
    """Records that case processes wrote (cases/<id>.record.json) and records.jsonl lacks (the
    launcher ended between the two, e.g. killed): appended now, in suite order, and returned. A
    record already in records.jsonl (same case and start time) is never appended twice; the
    launcher deletes a case's record file before it starts the case again, so a file there is
    the last attempt's."""
    records_path = Path(run_dir) / "records.jsonl"
    have = {(r.case_id, r.started_at) for r in read_records(records_path)} if records_path.exists() else set()
    out = []
    for case in suite.cases:
        f = launch.CasePaths.of(run_dir, case, create=False).record_file
        try:
            rec = Record.from_dict(json.loads(f.read_text()))
        except (OSError, ValueError, TypeError):  # absent, or not a whole record
            continue
        if rec.case_id != case.case_id or (rec.case_id, rec.started_at) in have:
            continue
        append_record(records_path, rec)
        out.append(rec)
    return out


def run_suite(suite: Suite, run_dir: Path, run_id: str, *, inline: bool = False,
              on_start: Callable[[int, int, Case], None] | None = None,
              on_end: Callable[[int, int, Record], None] | None = None,
              timeout_s: float | None = None) -> RunResult:
    """Run every case not yet ok in run_dir/records.jsonl; append each record as it ends.
    Ctrl-C or SIGTERM stops after keeping the finished records (result.interrupted = True).
    An OSError writing into run_dir (a full disk) propagates: what was appended stays, and the
    run folder can be resumed."""
    records_path = Path(run_dir) / "records.jsonl"
    recovered = recover_finished(suite, run_dir)
    done_ok: set[str] = set()
    if records_path.exists():
        done_ok = {cid for cid, r in latest_by_case(read_records(records_path)).items() if r.status == "ok"}
    result = RunResult(run_dir=Path(run_dir), run_id=run_id, recovered=[r.case_id for r in recovered])
    todo = [c for c in suite.cases if c.case_id not in done_ok]
    result.skipped_ok = [c.case_id for c in suite.cases if c.case_id in done_ok]
    try:
        with sigterm_as_interrupt():
            for i, case in enumerate(todo):
                if on_start:
                    on_start(i, len(todo), case)
                rec = pick_launcher(case, inline)(case, run_dir, run_id=run_id, suite=suite.name, timeout_s=timeout_s)
                if case.launcher == "torchrun":  # against the same case at nproc = 1, if it ran before
                    earlier = latest_by_case(read_records(records_path)) if records_path.exists() else {}
                    torchrun.add_scaling_efficiency(rec, earlier)
                append_record(records_path, rec)
                result.records.append(rec)
                if on_end:
                    on_end(i, len(todo), rec)
    except KeyboardInterrupt as e:
        result.interrupted = True
        result.signal_name = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
    return result
