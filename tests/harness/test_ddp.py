"""DistributedDataParallel under torchrun: suite keys, the launcher's command, combining ranks,
DDP's gradient buckets in the CPU tracker and in the estimate, faults and orphaned processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from enact_bench.commands.run import cli_overrides, run_command
from enact_bench.errors import SuiteError
from enact_bench.instrument.live_tensors import LiveTensorTracker
from enact_bench.predict.ddp_buckets import bucket_layout_bytes, trainable_param_bytes
from enact_bench.records import Record, read_records
from enact_bench.run.ddp_worker import combine_ranks
from enact_bench.run.torchrun import add_scaling_efficiency, alive, run_case_torchrun, torchrun_command
from enact_bench.suite import load_suite_text

REPO = Path(__file__).resolve().parents[2]

BASE = """
name = "t"
[defaults]
detector = "detr_tiny"
device = "cpu"
image_size = "64x80"
batch_size = 2
warmup = 1
iters = 1
cpu_threads = 1
"""


def _suite(extra: str):
    return load_suite_text(BASE + extra)


# ---------------------------------------------------------------------------------------
# suite keys and the command
# ---------------------------------------------------------------------------------------
def test_launcher_keys_and_case_ids():
    s = _suite('[[matrix]]\nlauncher = "process"\n[[matrix]]\nlauncher = "torchrun"\nnproc = [1, 2]\n'
               'rdzv_endpoint = "localhost:29511"\n')
    ids = [c.case_id for c in s.cases]
    assert ids == ["detr_tiny-base-train-b2-64x80",
                   "detr_tiny-base-train-b2-64x80-launcher=torchrun",
                   "detr_tiny-base-train-b2-64x80-launcher=torchrun-nproc=2"]  # the endpoint is where, not what
    assert [c.nproc for c in s.cases] == [1, 1, 2]


@pytest.mark.parametrize("matrix, says", [
    ('launcher = "mpi"', "launcher"),
    ("nproc = 2", 'need launcher = "torchrun"'),
    ('launcher = "torchrun"\nnproc = 0', "nproc"),
    ('launcher = "torchrun"\nnnodes = 2', "rdzv_endpoint"),
    ('launcher = "torchrun"\nnnodes = 2\nnode_rank = 2\nrdzv_endpoint = "h:1"', "node_rank"),
    ('launcher = "torchrun"\nrdzv_endpoint = "no-port"', "host:port"),
    ('launcher = "torchrun"\nfake = true', "ddp = true"),
    ('launcher = "torchrun"\ndevice = "cuda:1"', 'device = "cuda"'),
    ("ddp = true", "fake = true"),
])
def test_bad_launcher_settings_say_how_to_fix(matrix, says):
    with pytest.raises(SuiteError, match=says):
        _suite("[matrix]\n" + matrix + "\n")


def test_torchrun_command_one_node_and_several():
    one = _suite('[matrix]\nlauncher = "torchrun"\nnproc = 2\n').cases[0]
    cmd = torchrun_command(one, ["--x"])
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc-per-node=2" in cmd and "--max-restarts=0" in cmd
    assert cmd[-3:] == ["-m", "enact_bench.run.ddp_worker", "--x"]
    multi = _suite('[matrix]\nlauncher = "torchrun"\nnproc = 4\nnnodes = 2\nnode_rank = 1\n'
                   'rdzv_endpoint = "node0:29400"\n').cases[0]
    cmd = torchrun_command(multi, [])
    assert "--standalone" not in cmd
    assert {"--nnodes=2", "--node-rank=1", "--rdzv-endpoint=node0:29400", "--nproc-per-node=4"} <= set(cmd)


def test_cli_nproc_means_torchrun():
    assert cli_overrides(nproc=2) == [("launcher", ["torchrun"]), ("nproc", [2])]
    assert cli_overrides(launcher="process") == [("launcher", ["process"])]


# ---------------------------------------------------------------------------------------
# combining ranks, scaling efficiency
# ---------------------------------------------------------------------------------------
def _rank(peak_bytes, p50, start=100):
    m = {"cpu_tracked_peak_bytes": peak_bytes, "cpu_tracked_peak_mib": peak_bytes / 2**20,
         "cpu_tracked_start_bytes": start, "step_ms_p50": p50, "step_ms_p90": p50 + 1,
         "images_per_s": 2e3 / p50, "mem_peak_alloc_mib": None, "params": 7}
    return {"metrics": m, "reasons": {"mem_peak_alloc_mib": "no CUDA device"}}


def test_combine_ranks_takes_the_largest_memory_and_the_slowest_step():
    m, reasons = combine_ranks([_rank(1000, 50.0, start=10), _rank(1500, 80.0, start=20), _rank(1200, 40.0)], 2)
    assert m["cpu_tracked_peak_bytes_per_rank"] == [1000, 1500, 1200]
    assert m["cpu_tracked_peak_bytes"] == 1500 and m["peak_rank"] == 1 and m["cpu_tracked_start_bytes"] == 20
    assert m["step_ms_p50_per_rank"] == [50.0, 80.0, 40.0]
    assert m["slowest_rank"] == 1 and m["step_ms_p50"] == 80.0 and m["step_ms_p90"] == 81.0
    assert m["world_size"] == 3 and m["world_batch_size"] == 6
    assert m["images_per_s"] == pytest.approx(6 * 1e3 / 80.0)
    assert m["mem_peak_alloc_mib"] is None and reasons["mem_peak_alloc_mib_per_rank"] == "no CUDA device"
    assert m["params"] == 7 and m["scaling_efficiency"] is None and "nproc = 1" in reasons["scaling_efficiency"]


def test_scaling_efficiency_against_the_same_case_on_one_process():
    s = _suite('[[matrix]]\nlauncher = "process"\n[[matrix]]\nlauncher = "torchrun"\nnproc = 2\n')
    one, two = s.cases

    def rec(case, ips, **metrics):
        return Record(run_id="r", suite="t", case_id=case.case_id, status="ok", case=case.to_dict(),
                      metrics={"images_per_s": ips, **metrics}, null_reasons={"scaling_efficiency": "x"})
    r2 = rec(two, 15.0, world_size=2)
    add_scaling_efficiency(r2, {one.case_id: rec(one, 10.0)})
    assert r2.metrics["scaling_efficiency"] == pytest.approx(15.0 / (2 * 10.0))
    assert r2.metrics["scaling_baseline_case_id"] == one.case_id and "scaling_efficiency" not in r2.null_reasons
    r3 = rec(two, 15.0, world_size=2)
    add_scaling_efficiency(r3, {})
    assert "scaling_efficiency" not in r3.metrics


# ---------------------------------------------------------------------------------------
# the tracker and the estimate
# ---------------------------------------------------------------------------------------
def test_tracker_counts_a_storage_first_seen_as_a_write_destination_from_the_start():
    hidden = torch.zeros(1000)  # like DDP's buckets: alive, but not counted in at the start
    with LiveTensorTracker(count_existing=False) as tr:
        x = torch.ones(10)  # 40 B
        del x
        y = torch.ones(5)  # 20 B
        hidden.add_(1.0)  # in place: `hidden` existed before, all along
        torch.mul(y, 2.0, out=hidden[:5])  # out=: already known, not counted twice
    assert tr.late_bytes == 4000
    assert tr.start_bytes == 4000
    assert tr.peak_bytes == 4000 + 40  # x was alive together with `hidden`
    assert tr.end_bytes == 4000 + 20


def test_estimate_with_ddp_adds_the_trainable_parameters_bytes():
    from tests.estimate_helpers import estimate_detector
    from enact_bench.detectors import create_detector

    model = create_detector("detr_tiny")
    buckets = trainable_param_bytes(model)
    assert buckets == sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    layout = bucket_layout_bytes(model)
    assert sum(layout) == buckets and len(layout) > 1 and max(layout) <= 25 * 2**20 + max(
        p.numel() * 4 for p in model.parameters())
    plain = estimate_detector("detr_tiny", 1, (64, 80))
    ddp = estimate_detector("detr_tiny", 1, (64, 80), ddp=True)
    assert ddp.ddp_bucket_bytes == buckets and plain.ddp_bucket_bytes is None
    assert ddp.start_bytes - plain.start_bytes == buckets
    assert ddp.peak_bytes - plain.peak_bytes == buckets


# ---------------------------------------------------------------------------------------
# end to end: suites/ddp-smoke.toml (2 Gloo ranks on the CPU) beside the single process
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp-smoke")
    result = run_command("ddp-smoke", out=out, run_id="smoke")
    assert not result.interrupted
    return {r.case["launcher"]: r for r in read_records(result.run_dir / "records.jsonl")}


@pytest.mark.slow
def test_ddp_smoke_record_has_per_rank_figures(smoke_records):
    single, ddp = smoke_records["process"], smoke_records["torchrun"]
    assert single.status == "ok", single.error
    assert ddp.status == "ok", ddp.error
    m = ddp.metrics
    assert m["world_size"] == 2 and m["world_batch_size"] == 4 and ddp.case["dist_backend"] == "gloo"
    for k in ("cpu_tracked_peak_bytes", "step_ms_p50", "rss_peak_mib"):
        assert len(m[f"{k}_per_rank"]) == 2 and all(v > 0 for v in m[f"{k}_per_rank"])
    assert m["cpu_tracked_peak_bytes"] == max(m["cpu_tracked_peak_bytes_per_rank"])
    assert m["step_ms_p50"] == max(m["step_ms_p50_per_rank"])
    assert m["images_per_s"] == pytest.approx(4 * 1e3 / m["step_ms_p50"])
    assert m["scaling_efficiency"] == pytest.approx(m["images_per_s"] / (2 * single.metrics["images_per_s"]))
    assert m["mem_peak_alloc_mib_per_rank"] == [None, None]


@pytest.mark.slow
def test_ddp_rank_peak_exceeds_the_single_process_by_the_bucket_bytes(smoke_records):
    from enact_bench.detectors import create_detector

    single, ddp = smoke_records["process"], smoke_records["torchrun"]
    buckets = trainable_param_bytes(create_detector("detr_tiny"))
    assert ddp.metrics["ddp_bucket_bytes"] == buckets  # the reducer's own layout adds up to it
    # the tracker found the buckets when the reducer first wrote into them (mul_out), not at the start
    assert ddp.metrics["cpu_tracked_late_bytes"] == buckets and single.metrics["cpu_tracked_late_bytes"] == 0
    # rank 0 reads the single process's batch (seed + 0): the difference is DDP's buckets
    extra = ddp.metrics["cpu_tracked_peak_bytes_per_rank"][0] - single.metrics["cpu_tracked_peak_bytes"]
    assert extra == pytest.approx(buckets, rel=0.10)
    extra_start = ddp.metrics["cpu_tracked_start_bytes_per_rank"][0] - single.metrics["cpu_tracked_start_bytes"]
    assert extra_start == pytest.approx(buckets, rel=0.10)


@pytest.mark.slow
def test_ddp_estimate_predicts_the_gloo_ranks_tracked_peak(smoke_records):
    from tests.estimate_helpers import estimate_detector

    ddp = smoke_records["torchrun"]
    est = estimate_detector("detr_tiny", 2, (64, 80), ddp=True)
    # the estimate's batch has 6 boxes per image and a fixed assignment; the ranks' synthetic
    # batches 1..20 boxes and the Hungarian matcher: only the loss's few bytes differ
    for peak in ddp.metrics["cpu_tracked_peak_bytes_per_rank"]:
        assert est.peak_bytes == pytest.approx(peak, rel=0.01)


# ---------------------------------------------------------------------------------------
# faults: a rank out of memory, a failing rank, timeout and SIGTERM leave no process behind
# ---------------------------------------------------------------------------------------
def _torchrun_case(**extra):
    text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in {"launcher": "torchrun", "nproc": 2, **extra}.items())
    return _suite("[matrix]\n" + text).cases[0]


def _all_pids(run_dir: Path) -> list[int]:
    work = next((run_dir / "cases").glob("*.ranks"))
    return [int(f.read_text()) for f in work.glob("*.pid")]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("kind, status, says, rendezvous", [
    ("oom", "oom", "rank 1: OutOfMemoryError", "standalone"),
    # the multi-node options on one node: torchrun's static rendezvous at a given host:port
    ("error", "error", "rank 1: RuntimeError: ENACT_BENCH_FAULT", "endpoint"),
])
def test_a_failing_rank_decides_the_case(tmp_path, kind, status, says, rendezvous):
    extra = {"nnodes": 1, "node_rank": 0, "rdzv_endpoint": f"127.0.0.1:{_free_port()}"} if rendezvous == "endpoint" else {}
    case = _torchrun_case(**extra)
    assert ("--standalone" in torchrun_command(case, [])) == (rendezvous == "standalone")
    rec = run_case_torchrun(case, tmp_path, run_id="f", suite="t", timeout_s=240,
                            env={"ENACT_BENCH_FAULT": f"{kind}@rank1"})
    assert rec.status == status and says in rec.error, rec.error
    pids = _all_pids(tmp_path)
    assert len(pids) == 3 and not any(alive(p) for p in pids)  # torchrun and both ranks ended


@pytest.mark.slow
def test_case_timeout_ends_every_rank(tmp_path):
    t0 = time.monotonic()
    rec = run_case_torchrun(_torchrun_case(), tmp_path, run_id="t", suite="t", timeout_s=45, grace_s=5,
                            env={"ENACT_BENCH_FAULT": "hang@rank1"})
    assert rec.status == "error" and rec.error.startswith("timed out after 45")
    assert time.monotonic() - t0 < 45 + 30
    pids = _all_pids(tmp_path)
    assert len(pids) == 3, "torchrun and both ranks had started"
    assert not any(alive(p) for p in pids)


@pytest.mark.slow
def test_sigterm_to_the_run_ends_every_rank(tmp_path):
    suite = tmp_path / "hang.toml"
    suite.write_text(BASE + '[matrix]\nlauncher = "torchrun"\nnproc = 2\n')
    env = {**os.environ, "ENACT_BENCH_FAULT": "hang@rank0", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "enact_bench.cli", "run", "--suite", str(suite), "--out",
                             str(tmp_path / "reports"), "--run-id", "hang", "--no-report"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run_dir = tmp_path / "reports" / "hang"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # until torchrun and both ranks have written their pids
        works = list((run_dir / "cases").glob("*.ranks")) if (run_dir / "cases").exists() else []
        if works and len(list(works[0].glob("*.pid"))) == 3:
            break
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.5)
    pids = _all_pids(run_dir)
    assert len(pids) == 3
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out.decode()  # interrupted by SIGTERM, records kept
    assert not any(alive(p) for p in pids)


@pytest.mark.parametrize("name", ["dino_tiny", "deformable_detr_tiny_two_stage"])
def test_every_trainable_parameter_gets_a_gradient(name):
    # DDP with find_unused_parameters=False (the originals' setting, ours) fails from the second
    # iteration on if a trainable parameter takes no part in the loss
    from enact_bench.data.synthetic import SyntheticSource
    from enact_bench.detectors import create_detector

    torch.manual_seed(0)
    model = create_detector(name).train()
    crit = model.build_criterion()
    b = SyntheticSource(batch_size=1, num_classes=91, seed=0, image_size=(64, 80), size_dist=None, train=True).batch(0)
    losses = crit(model(b.images, targets=b.targets), b.targets)
    sum(losses[k] * crit.weight_dict[k] for k in losses if k in crit.weight_dict).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
