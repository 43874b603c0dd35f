"""Where a case runs: in a fresh subprocess (the default: a clean allocator and clean peak
statistics per case) or in this process (`--inline`). Both return a Record.

A launcher is a function `(case, run_dir, *, run_id, suite, timeout_s) -> Record` (`Launcher`);
the suite loop (run/suite_run.py) picks one per case. The subprocess launcher starts the child
in its own session (its own process group), so that a timeout, Ctrl-C or SIGTERM ends the whole
group (the child and anything it started, e.g. DataLoader workers), never leaving one behind.
The child's entry point is this module:

    python -m enact_bench.run.launch --case-json CASE.json --record-out RECORD.json

$ENACT_BENCH_CASE_IMPORTS (comma-separated module names) is imported by the child before the
case runs: a way to register one's own detectors, data sources or evaluations in the case
process (the tests use it to make a case hang).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from enact_bench import lifeline
from enact_bench.records import Record, utc_now
from enact_bench.run import case as case_mod
from enact_bench.suite.case import Case

CHILD_MODULE = "enact_bench.run.launch"
CASE_IMPORTS_ENV = "ENACT_BENCH_CASE_IMPORTS"
GRACE_S = 5.0  # between SIGTERM and SIGKILL when a case's process group is ended


class Launcher(Protocol):
    def __call__(self, case: Case, run_dir: Path, *, run_id: str, suite: str,
                 timeout_s: float | None = None) -> Record: ...


def launch_inline(case: Case, run_dir: Path, *, run_id: str, suite: str, timeout_s: float | None = None) -> Record:
    """The case in this process (debugging; RSS then includes earlier cases). No timeout."""
    return case_mod.run_case(case, run_id=run_id, suite=suite)


@dataclass(frozen=True)
class CasePaths:
    """A case's files in the run folder: cases/<id>.json (what to run), cases/<id>.record.json
    (what the child wrote), logs/<id>.log (its stdout and stderr)."""

    case_file: Path
    record_file: Path
    log_file: Path

    @classmethod
    def of(cls, run_dir: str | os.PathLike, case: Case, create: bool = True) -> "CasePaths":
        """The paths; `create`: make the cases/ and logs/ folders."""
        run_dir = Path(run_dir)
        if create:
            (run_dir / "cases").mkdir(parents=True, exist_ok=True)
            (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        name = safe_name(case.case_id)
        return cls(run_dir / "cases" / f"{name}.json", run_dir / "cases" / f"{name}.record.json",
                   run_dir / "logs" / f"{name}.log")


def safe_name(case_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=+," else "_" for c in case_id)


def child_env() -> dict:
    """The child must import this same enact_bench, installed or not. A lifeline parent pid
    inherited from whoever started this process is not the child's."""
    import enact_bench
    root = str(Path(enact_bench.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k != lifeline.PARENT_ENV}
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def child_command(paths: CasePaths) -> list[str]:
    return [sys.executable, "-m", CHILD_MODULE, "--case-json", str(paths.case_file),
            "--record-out", str(paths.record_file)]


def end_group(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM to the child's whole process group, SIGKILL after `grace_s`; reaps the child."""
    def signal_group(sig):
        if not hasattr(os, "killpg"):  # no process groups (Windows): the child alone
            if proc.poll() is None:
                proc.terminate() if sig == signal.SIGTERM else proc.kill()
            return
        try:
            os.killpg(proc.pid, sig)  # the child leads its own group (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass
    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    signal_group(signal.SIGKILL)  # the leader may be gone while members of its group live on
    proc.wait()


def run_in_own_group(cmd: list[str], log_file: Path, env: dict, timeout_s: float | None) -> int | None:
    """Run `cmd` in a new session, output to `log_file`. Returns its exit status, or None when it
    ran past `timeout_s`. On a timeout, or when this process is interrupted while waiting
    (KeyboardInterrupt, or SIGTERM turned into one by the suite loop), the child's whole process
    group is ended before returning or re-raising."""
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            end_group(proc)
            return None
        except BaseException:
            end_group(proc)
            raise
        end_group(proc, grace_s=0.0)  # leftovers of a finished child (no-op when there are none)
        return rc


def launch_subprocess(case: Case, run_dir: Path, *, run_id: str, suite: str,
                      timeout_s: float | None = None) -> Record:
    """The case in a fresh `python -m enact_bench.run.launch` process; its record, or an error
    record saying how the process ended (timeout, signal, exit code) with the log's tail.
    The child ends with this process (enact_bench.lifeline), whatever ends this one."""
    paths = CasePaths.of(run_dir, case)
    paths.record_file.unlink(missing_ok=True)
    paths.case_file.write_text(json.dumps({"case": case.to_dict(), "run_id": run_id, "suite": suite}, indent=1))
    started, t0 = utc_now(), time.perf_counter()
    env = {**child_env(), lifeline.PARENT_ENV: str(os.getpid())}
    rc = run_in_own_group(child_command(paths), paths.log_file, env, timeout_s)
    if paths.record_file.exists():
        return Record.from_dict(json.loads(paths.record_file.read_text()))
    tail = paths.log_file.read_text(errors="replace").strip().splitlines()[-15:]
    if rc is None:
        why = f"timed out after {timeout_s} s (its process group was ended)"
    elif rc < 0:
        why = f"case process killed by signal {-rc}" + (" (SIGKILL: host out of memory?)" if rc == -9 else "")
    else:
        why = f"case process exited with code {rc}"
    return case_mod.failed_record(case, run_id=run_id, suite=suite, why=why + ("\n" + "\n".join(tail) if tail else ""),
                                  started_at=started, duration_s=time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {CHILD_MODULE}", description="Run one case; write its record.")
    p.add_argument("--case-json", required=True, help="file with {case, run_id, suite}")
    p.add_argument("--record-out", required=True, help="where to write the record (JSON)")
    args = p.parse_args(argv)
    # first: a launcher killed from now on (even by SIGKILL) takes this case's process group with it
    lifeline.end_with_parent(whole_group=True)
    for name in filter(None, (s.strip() for s in os.environ.get(CASE_IMPORTS_ENV, "").split(","))):
        importlib.import_module(name)
    spec = json.loads(Path(args.case_json).read_text())
    case = Case.from_dict(spec["case"])
    rec = case_mod.run_case(case, run_id=spec.get("run_id", "subprocess"), suite=spec.get("suite", ""))
    tmp = Path(args.record_out).with_suffix(".tmp")
    tmp.write_text(rec.to_json())
    tmp.replace(args.record_out)  # atomic: the parent sees a whole record or none
    print(f"{rec.case_id}: {rec.status}" + (f" ({rec.error.splitlines()[0]})" if rec.error else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
