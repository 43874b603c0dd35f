"""Records: JSONL append/read round trip, truncated lines, NaN, latest per case, environment."""
from __future__ import annotations

import json
import math

import pytest

from enact_bench.records import Record, append_record, capture_env, latest_by_case, read_records
from enact_bench.summary import change_pct, pairs


def _rec(case_id, status="ok", enact=False, mem=100.0, ms=10.0, **case):
    c = {"detector": "detr_tiny", "enact": enact, "enact_config": {"sigma": 3.0} if enact else None,
         "attention": "mha", "mode": "train", "batch_size": 2, "image_size": [64, 96], **case}
    return Record(run_id="r", suite="s", case_id=case_id, status=status, case=c,
                  metrics={"cpu_tracked_peak_mib": mem, "mem_peak_alloc_mib": None, "step_ms_p50": ms,
                           "cpu_tracked_peak_bytes": int(mem * 2**20), "cpu_tracked_start_bytes": 50 * 2**20})


def test_append_then_read_round_trip(tmp_path):
    path = tmp_path / "run" / "records.jsonl"
    append_record(path, _rec("a"))
    append_record(path, _rec("b", status="oom"))
    got = read_records(path)
    assert [r.case_id for r in got] == ["a", "b"] and got[1].status == "oom"
    line = json.loads(path.read_text().splitlines()[0])
    assert line["schema"] == 1 and list(line)[:5] == ["schema", "run_id", "suite", "case_id", "status"]
    assert read_records(path.parent)[0].metrics == got[0].metrics  # a run folder works too


def test_truncated_last_line_is_skipped(tmp_path):
    path = tmp_path / "records.jsonl"
    append_record(path, _rec("a"))
    with open(path, "a") as f:
        f.write('{"schema": 1, "case_id": "b", "sta')  # killed mid-write
    with pytest.warns(UserWarning, match="unreadable"):
        assert [r.case_id for r in read_records(path)] == ["a"]


def test_nan_becomes_null_and_bad_status_is_refused(tmp_path):
    r = _rec("a")
    r.metrics["step_ms_p50"] = math.nan
    assert json.loads(r.to_json())["metrics"]["step_ms_p50"] is None
    with pytest.raises(ValueError, match="status"):
        _rec("a", status="fine")


def test_latest_attempt_wins():
    recs = [_rec("a", status="error"), _rec("b"), _rec("a")]
    latest = latest_by_case(recs)
    assert latest["a"].status == "ok" and list(latest) == ["a", "b"]  # the last attempt, in suite order


def test_pairs_and_changes():
    recs = [_rec("base", mem=200.0, ms=10.0), _rec("enact", enact=True, mem=150.0, ms=12.0),
            _rec("lonely", enact=True, mode="infer")]
    (p,) = pairs(recs)
    row = p.row()
    assert row["mem_change_pct"] == pytest.approx(-25.0) and row["time_change_pct"] == pytest.approx(20.0)
    assert row["memory_kind"] == "cpu_tracked"
    assert row["own_mem_change_pct"] == pytest.approx((100 - 150) / 150 * 100)  # (150-50) vs (200-50)
    assert change_pct(None, 1.0) is None and change_pct(0.0, 1.0) is None


def test_environment_on_this_machine():
    env = capture_env("cpu")
    for key in ("device_name", "device_kind", "driver", "torch", "torchvision", "cuda", "cudnn_benchmark",
                "tf32_matmul", "tf32_cudnn", "git_commit", "host", "python"):
        assert key in env
    assert env["device_kind"] == "cpu" and env["cuda"] is None and env["driver"] is None
    import torch
    assert env["torch"] == torch.__version__


def test_append_after_a_torn_line_sets_it_aside(tmp_path, capsys):
    # fault 2: a killed process leaves half a line; the next append must not glue onto it
    path = tmp_path / "records.jsonl"
    append_record(path, _rec("a"))
    torn = _rec("b").to_json()[:40]
    with open(path, "a") as f:
        f.write(torn)
    append_record(path, _rec("c"))
    append_record(path, _rec("d"))
    assert [r.case_id for r in read_records(path)] == ["a", "c", "d"]  # no warning: the file is whole
    assert (tmp_path / "records.jsonl.torn").read_text() == torn + "\n"
    err = capsys.readouterr().err
    assert err.count("cut off mid-write") == 1 and "records.jsonl.torn" in err


def test_a_whole_last_record_without_newline_is_kept(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(_rec("a").to_json())  # e.g. written by hand, no trailing newline
    append_record(path, _rec("b"))
    assert [r.case_id for r in read_records(path)] == ["a", "b"] and not (tmp_path / "records.jsonl.torn").exists()


def test_every_reader_treats_a_torn_tail_alike(tmp_path):
    # show (Record objects), report (a DataFrame) and check (dicts) read the same cases
    from enact_bench.commands.show import load_run_records
    from enact_bench.regress import load_run
    from enact_bench.report import load_records

    path = tmp_path / "records.jsonl"
    for cid in ("a", "b"):
        append_record(path, _rec(cid))
    with open(path, "a") as f:
        f.write('{"schema": 1, "case_id": "c", "sta')
    with pytest.warns(UserWarning, match="incomplete last record"):
        shown = [r.case_id for r in load_run_records(tmp_path)]
    with pytest.warns(UserWarning, match="incomplete last record"):
        checked = [r["case_id"] for r in load_run(tmp_path)]
    with pytest.warns(UserWarning, match="incomplete last record"):
        reported = list(load_records(tmp_path)["case_id"])
    assert shown == checked == reported == ["a", "b"]
    # a bad line that is not the last one is an error for all three, naming the line
    from enact_bench.records import RecordsError
    path.write_text(path.read_text().replace('"case_id": "a"', '"case_id": "a', 1) + "\n" + _rec("d").to_json() + "\n")
    for read in (load_run_records, load_run, load_records):
        with pytest.raises(RecordsError, match=r"records.jsonl:1: not valid JSON"):
            read(tmp_path)


def test_checkpoints_do_not_stop_pairing():
    # fault 7: a baseline and an ENACT model are trained separately: their weights differ
    recs = [_rec("base", checkpoint="/w/detr.pth", checkpoint_sha256="1" * 64),
            _rec("enact", enact=True, mem=150.0, checkpoint="/w/detr_enact.pth", checkpoint_sha256="2" * 64),
            _rec("other", enact=True, batch_size=4, checkpoint="/w/detr_enact.pth")]
    (p,) = pairs(recs)
    assert (p.base.case_id, p.enact.case_id) == ("base", "enact")
