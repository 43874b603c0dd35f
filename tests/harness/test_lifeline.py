"""Nothing outlives a killed `enact-bench`: a case process (and what it started), a torchrun launcher
and its ranks, and `plan`'s forked workers end within seconds when their parent is killed with
SIGKILL, which no handler can catch (enact_bench/lifeline.py); a record the case had finished is
kept and `--resume` uses it. Real processes and a real kill -9 throughout."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from enact_bench.records import read_records
from enact_bench.run.launch import CASE_IMPORTS_ENV

ROOT = Path(__file__).resolve().parents[2]
ENDS_WITHIN_S = 5.0

# the case process starts a grandchild, says both pids, then hangs (the case never finishes)
HANG_PLUGIN = '''
import json, os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.environ["PIDS_FILE"], "w") as f:
    json.dump([os.getpid(), grandchild.pid], f)
time.sleep(600)
'''
# the case runs to its end and its record is written where the launcher reads it; then the
# launcher is killed before it can append the record (what a kill -9 at that moment leaves)
FINISH_THEN_KILL_PLUGIN = '''
import os, signal, sys, time
from pathlib import Path
import enact_bench.run.case as case_mod
_run_case = case_mod.run_case

def run_case(case, **kw):
    rec = _run_case(case, **kw)
    out = Path(sys.argv[sys.argv.index("--record-out") + 1])
    out.write_text(rec.to_json())
    Path(os.environ["PIDS_FILE"]).write_text(str(os.getpid()))
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(600)
    return rec

case_mod.run_case = run_case
'''
SUITE = '''name = "lifeline"
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
enact = [true]
'''


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_for_file(path: Path, seconds: float, proc: subprocess.Popen):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return json.loads(path.read_text())
        assert proc.poll() is None or path.exists(), proc.stdout.read() if proc.stdout else ""
        time.sleep(0.1)
    raise AssertionError(f"{path} not written within {seconds} s")


def _ended_within(pids, seconds: float) -> float | None:
    """Seconds until none of `pids` runs, or None if some still run after `seconds`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if not any(alive(p) for p in pids):
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def _kill_all(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def plugin_env(tmp_path):
    def make(source: str) -> tuple[dict, Path]:
        (tmp_path / "lifeline_plugin.py").write_text(source)
        pids = tmp_path / "pids.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
               CASE_IMPORTS_ENV: "lifeline_plugin", "PIDS_FILE": str(pids)}
        return env, pids
    return make


def _start_run(tmp_path, env, *extra) -> subprocess.Popen:
    suite = tmp_path / "lifeline.toml"
    suite.write_text(SUITE)
    return subprocess.Popen([sys.executable, "-m", "enact_bench.cli", "run", "--suite", str(suite), "--out",
                             str(tmp_path / "reports"), "--run-id", "r", "--no-report", *extra],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_kill_9_of_the_run_ends_the_case_process_and_what_it_started(tmp_path, plugin_env):
    env, pids_file = plugin_env(HANG_PLUGIN)
    proc = _start_run(tmp_path, env)
    pids = []
    try:
        pids = _wait_for_file(pids_file, 120, proc)
        assert all(alive(p) for p in pids)
        proc.kill()  # SIGKILL: enact-bench runs no handler, ends no child itself
        proc.wait(timeout=30)
        took = _ended_within(pids, ENDS_WITHIN_S)
        assert took is not None, f"case process and its child {pids} outlived the killed run"
    finally:
        _kill_all(pids)
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_a_record_the_case_finished_is_kept_and_resume_uses_it(tmp_path, plugin_env):
    env, pids_file = plugin_env(FINISH_THEN_KILL_PLUGIN)
    proc = _start_run(tmp_path, env)
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, out
    case_pid = int(pids_file.read_text())
    assert _ended_within([case_pid], ENDS_WITHIN_S) is not None, "the case process outlived its launcher"
    run_dir = tmp_path / "reports" / "r"
    assert not (run_dir / "records.jsonl").exists()  # the launcher died before appending
    # resume, without the plugin: the finished record is taken, the case is not run again
    env = {k: v for k, v in env.items() if k != CASE_IMPORTS_ENV}
    res = subprocess.run([sys.executable, "-m", "enact_bench.cli", "run", "--resume", str(run_dir), "--no-report"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 case(s) had finished before the run was stopped" in res.stdout
    assert "1 case(s) already ok were skipped" in res.stdout
    recs = read_records(run_dir)
    assert [(r.case_id, r.status) for r in recs] == [("detr_tiny-enact-train-b1-64x96", "ok")]
    # and a second resume appends nothing (the record is not recovered twice)
    res = subprocess.run([sys.executable, "-m", "enact_bench.cli", "run", "--resume", str(run_dir), "--no-report"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0 and len(read_records(run_dir)) == 1, res.stdout + res.stderr


POOL_PARENT = '''
import os, sys, time
sys.path.insert(0, {root!r})
from enact_bench.lifeline import fork_pool

def job(i):
    with open(os.path.join({folder!r}, f"worker{{os.getpid()}}"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(3)          # still working when the parent is killed
    return b"x" * 1_000_000  # then a result to send back through the pool's pipe

pool = fork_pool(2)
pool.map(job, range(2), chunksize=1)
'''


def test_plan_workers_end_with_a_killed_parent_without_tracebacks(tmp_path):
    folder = tmp_path / "workers"
    folder.mkdir()
    script = tmp_path / "parent.py"
    script.write_text(POOL_PARENT.format(root=str(ROOT), folder=str(folder)))
    err = tmp_path / "stderr.txt"
    with open(err, "w") as f:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=f, stderr=subprocess.STDOUT)
    workers = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = [int(p.read_text()) for p in folder.iterdir() if p.read_text()]
            time.sleep(0.05)
        assert len(workers) == 2
        proc.kill()
        proc.wait(timeout=30)
        assert _ended_within(workers, ENDS_WITHIN_S) is not None, "plan workers outlived their parent"
        time.sleep(3.5)  # past the moment the workers would have sent their results
        assert "Traceback" not in err.read_text() and "BrokenPipeError" not in err.read_text(), err.read_text()
    finally:
        _kill_all(workers)


def test_plan_forks_its_workers_through_the_lifeline_pool(monkeypatch):
    import enact_bench.lifeline as lifeline
    from enact_bench.predict.gpus import get_gpu
    from enact_bench.predict.plan import PlanRequest
    from enact_bench.predict.planner import plan_detector

    class Used(Exception):
        pass

    def pool(n):
        raise Used(n)

    monkeypatch.setattr(lifeline, "fork_pool", pool)
    req = PlanRequest("detr_tiny", get_gpu("h100-80gb"), (64, 64), batch_sizes=(1,), jobs=2,
                      variants=("original", "fused"))
    with pytest.raises(Used):
        plan_detector(req)


@pytest.mark.slow
def test_kill_9_of_the_run_ends_torchrun_and_every_rank(tmp_path):
    suite = tmp_path / "ddp.toml"
    suite.write_text(SUITE.replace("[matrix]\nenact = [true]\n", '[matrix]\nlauncher = "torchrun"\nnproc = 2\n'))
    env = {**os.environ, "ENACT_BENCH_FAULT": "hang@rank0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "enact_bench.cli", "run", "--suite", str(suite), "--out",
                             str(tmp_path / "reports"), "--run-id", "ddp", "--no-report"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    cases = tmp_path / "reports" / "ddp" / "cases"
    pids = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # torchrun and both ranks have written their pids
            works = list(cases.glob("*.ranks")) if cases.exists() else []
            pids = [int(f.read_text()) for f in works[0].glob("*.pid") if f.read_text()] if works else []
            if len(pids) == 3:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.2)
        assert len(pids) == 3 and all(alive(p) for p in pids)
        proc.kill()
        proc.wait(timeout=30)
        assert _ended_within(pids, ENDS_WITHIN_S) is not None, f"torchrun or a rank of {pids} outlived the run"
    finally:
        _kill_all(pids)
        if proc.poll() is None:
            proc.kill()
