"""Launch one case as DistributedDataParallel ranks under PyTorch's own launcher, torchrun
(`python -m torch.distributed.run`), and turn what the ranks leave behind into one record.

The command (torchrun_command):
- one node: `--standalone`, a c10d rendezvous on localhost:0, so the store binds a free port
  chosen by the OS and two runs on one machine never collide;
- several nodes: `--nnodes N --node-rank K --rdzv-endpoint HOST:PORT` (torchrun's static
  rendezvous: node 0 hosts the store at HOST:PORT and global rank 0, so its launcher writes the
  record; the same suite runs on every node with its own node_rank);
- `--max-restarts=0`: a failed rank ends the case (torchrun stops the other ranks);
- `-m enact_bench.run.ddp_worker`: each rank's entry point (run/ddp_worker.py).

torchrun runs in its own session (process group). Its workers each get a session of their own
(torch.distributed.elastic starts them with start_new_session=True), so ending the case is done
by pid, not by group alone: on a timeout, Ctrl-C or SIGTERM the launcher sends SIGTERM to
torchrun's group (torchrun passes it to its workers) and to every rank it knows (the ranks write
their pids; the launcher also reads torchrun's children from /proc), waits a grace period, then
SIGKILLs whatever is left. Ctrl-C (and SIGTERM, which run/suite_run.py turns into a
KeyboardInterrupt) is re-raised afterwards, so the suite stops with its finished records kept.

Outcome: rank 0's record file; else the ranks' failure files (an `oom` on any rank makes the
case oom, otherwise the earliest failure's message is the error: the others' collectives fail
after it); else torchrun's exit status and the
end of its log.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from enact_bench import lifeline
from enact_bench.records import Record, utc_now
from enact_bench.suite.case import Case

GRACE_S = 10.0  # after SIGTERM, before SIGKILL


def torchrun_command(case: Case, worker_args: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={case.nproc}", "--max-restarts=0"]
    if case.nnodes == 1 and not case.rdzv_endpoint:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={case.nnodes}", f"--node-rank={case.node_rank}", f"--rdzv-endpoint={case.rdzv_endpoint}"]
    return cmd + ["-m", "enact_bench.run.ddp_worker", *worker_args]


def visible_cuda_devices() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _children(pid: int) -> set[int]:
    """All descendants of pid, from /proc (Linux); empty where /proc is absent."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except OSError:
                continue
            for k in map(int, kids):
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


def alive(pid: int) -> bool:
    """True while pid runs (a zombie, exited but not reaped, counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path("/proc").is_dir()


def rank_pids(work: Path) -> dict[int, int]:
    pids = {}
    for f in work.glob("rank*.pid"):
        try:
            pids[int(f.stem.removeprefix("rank"))] = int(f.read_text())
        except ValueError:
            continue
    return pids


def stop(proc: subprocess.Popen, work: Path, grace_s: float = GRACE_S) -> None:
    """End torchrun and every rank: SIGTERM, a grace period, then SIGKILL."""
    pids = (_children(proc.pid) | set(rank_pids(work).values())) - {os.getpid()}
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not any(alive(p) for p in pids):
            break
        time.sleep(0.1)
    pids |= _children(proc.pid) | set(rank_pids(work).values())
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _failure_record(case: Case, run_id: str, suite: str, status: str, error: str, started: str, t0: float) -> Record:
    from enact_bench.metrics import record_metric_names
    why = {"skipped": "case skipped"}.get(status, f"case ended with status {status}")
    metrics = {k: None for k in record_metric_names(torchrun=True)}
    return Record(run_id=run_id, suite=suite, case_id=case.case_id, status=status,
                  case={**case.to_dict(), "attention": None}, metrics=metrics,
                  null_reasons={k: why for k in metrics}, error=error, started_at=started,
                  duration_s=round(time.perf_counter() - t0, 3))


def precheck(case: Case) -> str | None:
    """Why this case cannot run on this machine (a skip reason), or None."""
    if case.device.startswith("cuda"):
        n = visible_cuda_devices()
        if n < case.nproc:
            return (f"needs {case.nproc} CUDA device(s) on this node (one per rank), {n} visible")
    return None


def run_case_torchrun(case: Case, run_dir: Path, *, run_id: str, suite: str,
                      timeout_s: float | None = None, env: dict | None = None,
                      grace_s: float = GRACE_S) -> Record:
    from enact_bench.run.launch import CasePaths, child_env

    started, t0 = utc_now(), time.perf_counter()
    skip = precheck(case)
    if skip:
        return _failure_record(case, run_id, suite, "skipped", skip, started, t0)
    paths = CasePaths.of(run_dir, case)
    case_file, record_file, log_file = paths.case_file, paths.record_file, paths.log_file
    work = case_file.with_suffix(".ranks")  # the ranks' pid and failure files
    work.mkdir(parents=True, exist_ok=True)
    for f in list(work.glob("rank*")) + list(work.glob("torchrun.pid")):
        f.unlink()
    record_file.unlink(missing_ok=True)
    case_file.write_text(json.dumps({"case": case.to_dict(), "run_id": run_id, "suite": suite}, indent=1))
    # torchrun through the lifeline wrapper: it ends with this process, its ranks with it
    cmd = lifeline.wrap_command(torchrun_command(case, ["--case-json", str(case_file), "--record-out",
                                                        str(record_file), "--work-dir", str(work)]))
    child_env_ = {**child_env(), **(env or {})}
    if not case.device.startswith("cuda"):
        child_env_.setdefault("OMP_NUM_THREADS", str(case.cpu_threads or 1))
    timed_out = False
    with open(log_file, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env_,
                                start_new_session=True)
        (work / "torchrun.pid").write_text(str(proc.pid))
        try:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                stop(proc, work, grace_s)
        except BaseException:  # Ctrl-C, or SIGTERM turned into KeyboardInterrupt by run/suite_run.py
            stop(proc, work, grace_s)
            raise
        finally:
            if proc.poll() is None:
                stop(proc, work, grace_s)
            else:  # torchrun ended: no rank may outlive it
                left = [p for p in rank_pids(work).values() if alive(p)]
                if left:
                    stop(proc, work, grace_s)
    if record_file.exists() and not timed_out:
        rec = Record.from_dict(json.loads(record_file.read_text()))
        rec.duration_s = round(time.perf_counter() - t0, 3)
        return rec
    failures = []
    for f in sorted(work.glob("rank*.json")):
        try:
            failures.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    failures.sort(key=lambda f: f.get("time", float("inf")))  # the first failure is the cause
    tail = "\n".join(log_file.read_text(errors="replace").strip().splitlines()[-15:])
    if timed_out:
        return _failure_record(case, run_id, suite, "error", f"timed out after {timeout_s} s; all ranks stopped\n{tail}",
                               started, t0)
    if any(f.get("status") == "oom" for f in failures):
        first = next(f for f in failures if f.get("status") == "oom")
        return _failure_record(case, run_id, suite, "oom", first["error"], started, t0)
    if failures:
        return _failure_record(case, run_id, suite, "error", failures[0]["error"], started, t0)
    if case.nnodes > 1 and case.node_rank != 0 and proc.returncode == 0:
        return _failure_record(case, run_id, suite, "skipped",
                               f"node_rank {case.node_rank}: the record of this case is written on node 0", started, t0)
    rc = proc.returncode
    why = f"torchrun exited with code {rc}" if rc >= 0 else f"torchrun killed by signal {-rc}"
    return _failure_record(case, run_id, suite, "error", f"{why}\n{tail}", started, t0)


def scaling_baseline_ids(case: Case) -> list[str]:
    """case_ids of the same configuration on one process, in order of preference: torchrun with
    nproc = 1 (DDP's own overhead included), then the plain process launcher."""
    import dataclasses
    one = dataclasses.replace(case, nproc=1, nnodes=1, node_rank=0, rdzv_endpoint=None)
    return [one.case_id, dataclasses.replace(one, launcher="process").case_id]


def add_scaling_efficiency(rec: Record, earlier: dict[str, Record]) -> None:
    """scaling_efficiency = global images/s / (world size x images/s of the same case at
    nproc = 1), when such a case ended ok earlier in the run (`earlier`: case_id -> record)."""
    if rec.status != "ok" or rec.case.get("launcher") != "torchrun":
        return
    ws, ips = rec.metrics.get("world_size"), rec.metrics.get("images_per_s")
    for cid in scaling_baseline_ids(Case.from_dict(rec.case)):
        base = earlier.get(cid)
        if cid == rec.case_id or base is None or base.status != "ok" or not base.metrics.get("images_per_s"):
            continue
        if ws and ips:
            rec.metrics["scaling_efficiency"] = ips / (ws * base.metrics["images_per_s"])
            rec.metrics["scaling_baseline_case_id"] = cid
            rec.null_reasons.pop("scaling_efficiency", None)
            rec.null_reasons.pop("scaling_baseline_case_id", None)
        return
