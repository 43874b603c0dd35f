"""build_report on the fixture runs: every file written, plots non-empty, HTML self-contained."""
from __future__ import annotations

import base64
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from enact_bench.records import RecordsError
from enact_bench.report import build_report, default_out_dir, load_records, read_records
from enact_bench.report.labels import DEFORMABLE_ENACT
from enact_bench.report.plot_sweeps import sweep_plot
from enact_bench.report.plot_tradeoff import pareto_front, tradeoff_plot

FIX = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
PLOTS = ("memory_per_detector", "step_time_per_detector", "sweep_image_size", "sweep_batch_size",
         "ap_vs_memory", "key_length_per_layer")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, build_report([FIX, FIX / "cpu_run"], out)


def test_every_plot_is_written_as_png_and_svg(built):
    out, paths = built
    for name in PLOTS:
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert paths[png.name] == png and paths[svg.name] == svg
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        head = svg.read_text()[:400]
        assert "<svg" in head and svg.stat().st_size > 10_000


def test_tables_and_csv_files(built):
    out, paths = built
    for name in ("report.md", "report.html", "runs.csv", "records.csv", "paired.csv", "coco.csv"):
        assert paths[name].is_file() and paths[name].stat().st_size > 0, name
    paired = pd.read_csv(out / "paired.csv")
    r = paired[(paired.detector == "anchor_detr_r50_dc5")].iloc[0]
    assert r.mem_peak_alloc_mib_delta == pytest.approx((9200.0 - 14900.0) / 14900.0 * 100)
    assert len(pd.read_csv(out / "records.csv")) == 39
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs["git commit"].str[:8]) == ["1a2b3c4d", "9f8e7d6c"]


def test_markdown_links_its_plots_and_labels_runs_and_extension(built):
    out, _ = built
    md = (out / "report.md").read_text()
    for name in PLOTS:
        assert f"]({name}.png)" in md and f"]({name}.svg)" in md
    for target in re.findall(r"\]\(([^)]+)\)", md):
        assert (out / target).is_file(), target
    assert "NVIDIA H100 80GB HBM3 (synthetic fixture) · torch 2.14.1 · 1a2b3c4d" in md
    assert "Intel Xeon Platinum 8480+ (synthetic fixture) · torch 2.14.1 · 9f8e7d6c" in md
    assert DEFORMABLE_ENACT in md
    assert "| OOM " in md and "fits only with ENACT" in md
    assert "| nan " not in md.lower()


def test_html_is_self_contained_and_embeds_every_plot(built):
    out, _ = built
    page = (out / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"' >]+)""", page, flags=re.I)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), \
        [r[:60] for r in refs if not r.startswith("data:")]
    assert not re.search(r"<link|<script|@import|url\(|https?://", page, flags=re.I)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(PLOTS)
    assert base64.b64decode(images[0]) == (out / f"{PLOTS[0]}.png").read_bytes()
    assert "<table" in page and "OOM" in page


def test_optional_plots_only_when_the_data_has_them():
    cpu_only = load_records(FIX / "cpu_run")
    out = Path("/nonexistent-never-written")
    assert sweep_plot(cpu_only, out, "image_size") is None
    assert sweep_plot(cpu_only, out, "batch_size") is None
    assert tradeoff_plot(cpu_only, out) is None


def test_pareto_front():
    # (memory, AP): (2, 39) and (1, 38) and (4, 41) are on the front; (3, 38.5) and (5, 40) are not
    pts = [(4.0, 41.0), (3.0, 38.5), (1.0, 38.0), (2.0, 39.0), (5.0, 40.0)]
    assert pareto_front(pts) == [2, 3, 0]


def test_reading_records_errors_and_truncated_tail(tmp_path):
    good = (FIX / "cpu_run" / "records.jsonl").read_text().splitlines()
    (tmp_path / "records.jsonl").write_text("\n".join(good) + "\n" + good[0][:50])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert len(read_records(tmp_path / "records.jsonl")) == len(good)
    assert "incomplete last record" in str(w[0].message)
    (tmp_path / "records.jsonl").write_text(good[0][:50] + "\n" + good[1] + "\n")
    with pytest.raises(ValueError, match=r"records.jsonl:1: not valid JSON"):
        read_records(tmp_path / "records.jsonl")
    (tmp_path / "records.jsonl").write_text(good[0].replace('"schema": 1', '"schema": 7') + "\n")
    with pytest.raises(ValueError, match="schema 7 is not supported"):
        read_records(tmp_path / "records.jsonl")
    with pytest.raises(RecordsError, match="no records found at"):
        load_records(tmp_path / "empty")


def test_default_out_dir():
    assert default_out_dir([FIX]) == FIX / "report"
    assert default_out_dir([FIX, FIX / "cpu_run"]) == FIX.parent / "report-fixtures-vs-cpu_run"


def test_report_package_never_imports_torch():
    code = ("import sys, enact_bench.report, enact_bench.report.build; "
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stdout + res.stderr


def test_resumed_run_keeps_the_last_attempt_and_device_index_is_understood(tmp_path):
    lines = (FIX / "cpu_run" / "records.jsonl").read_text().splitlines()
    import json
    first = json.loads(lines[0])
    failed = dict(first, status="error", error="RuntimeError: first attempt", metrics={})
    retried = json.loads(lines[0])
    retried["case"]["device"] = "cpu:0"
    (tmp_path / "records.jsonl").write_text("\n".join([json.dumps(failed)] + lines[1:] + [json.dumps(retried)]) + "\n")
    df = load_records(tmp_path)
    assert len(df) == len(lines)
    row = df[df.case_id == first["case_id"]].iloc[0]
    assert row.status == "ok" and row.device_type == "cpu" and df.index[df.case_id == first["case_id"]][0] == 0
    assert row.cpu_tracked_peak_mib == pytest.approx(first["metrics"]["cpu_tracked_peak_bytes"] / 2**20)
