"""Fault 4: SIGTERM to `enact-bench run` and a case timeout end the case's whole process group
(the case process and what it started), keep the finished records and, for SIGTERM, write the
partial report as Ctrl-C does. Real processes: a plug-in module imported by the case process
($ENACT_BENCH_CASE_IMPORTS) starts a grandchild and hangs, for the ENACT case only."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from enact_bench.run.launch import CASE_IMPORTS_ENV, launch_subprocess
from enact_bench.suite import Case

ROOT = Path(__file__).resolve().parents[2]
HANG_PLUGIN = '''
import json, os, subprocess, sys, time
case = json.load(open(sys.argv[sys.argv.index("--case-json") + 1]))["case"]
if case["enact"]:
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["HANG_PIDS"], "w") as f:
        json.dump([os.getpid(), grandchild.pid], f)
    time.sleep(600)
'''
SUITE = '''name = "hang"
[defaults]
detector = "detr_tiny"
image_size = "64x96"
batch_size = 1
iters = 1
warmup = 1
flops = false
cpu_threads = 1
[matrix]
enact = [false, true]
'''


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its exit status is left


def _wait_for(path: Path, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return json.loads(path.read_text())
        time.sleep(0.2)
    raise AssertionError(f"the hanging case did not start within {seconds} s")


def _gone(pids, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def hang_env(tmp_path, monkeypatch):
    (tmp_path / "hang_plugin.py").write_text(HANG_PLUGIN)
    pids = tmp_path / "pids.json"
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), CASE_IMPORTS_ENV: "hang_plugin",
           "HANG_PIDS": str(pids)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield pids
    if pids.exists():  # never leave a sleeper behind, even when an assertion failed
        for pid in json.loads(pids.read_text()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_sigterm_ends_the_case_group_keeps_records_and_writes_the_report(tmp_path, hang_env):
    suite = tmp_path / "hang.toml"
    suite.write_text(SUITE)
    out = tmp_path / "reports"
    proc = subprocess.Popen([sys.executable, "-m", "enact_bench.cli", "run", "--suite", str(suite), "--out", str(out),
                             "--run-id", "t"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ))
    try:
        pids = _wait_for(hang_env, 240)  # the baseline case ran first; the ENACT case now hangs
        assert all(_alive(p) for p in pids)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert _gone(pids), f"case processes {pids} survived SIGTERM"
    recs = [json.loads(line) for line in (out / "t" / "records.jsonl").read_text().splitlines()]
    assert [(r["case_id"], r["status"]) for r in recs] == [("detr_tiny-base-train-b1-64x96", "ok")]
    assert (out / "t" / "report" / "report.html").is_file()
    assert "interrupted (SIGTERM)" in output and "--resume" in output


def test_case_timeout_ends_the_whole_process_group(tmp_path, hang_env):
    case = Case(detector="detr_tiny", enact=True, image_size=(64, 96), batch_size=1, iters=1, warmup=1)
    t0 = time.monotonic()
    rec = launch_subprocess(case, tmp_path / "run", run_id="t", suite="hang", timeout_s=15)
    assert time.monotonic() - t0 < 15 + 30  # timeout, then SIGTERM (the group dies at once)
    assert rec.status == "error" and rec.error.startswith("timed out after 15 s"), rec.error
    pids = json.loads(hang_env.read_text())
    assert _gone(pids), f"case processes {pids} survived the timeout"
