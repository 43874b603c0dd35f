"""A run that mixes measured cases and full-size estimates (the `ci` suite's shape): the memory
plot draws the estimates (hatched, labelled), never "not measured" beside a figure the record
has; the time plot leaves the untimed estimates out and its legend names only what has a bar; the
estimate tables read like the other tables; a run without a git commit is labelled whole."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest

from enact_bench.report import build_report

FIX = Path(__file__).parent / "fixtures"


def _fake(rec: dict, enact: bool, peak_mib: float) -> dict:
    r = copy.deepcopy(rec)
    r["case"].update(detector="detr_r50", image_size=[800, 1333], fake=True, enact=enact,
                     enact_config={"cluster_size": 6} if enact else None)
    r["case_id"] = f"detr_r50-{'enact' if enact else 'base'}-train-b2-800x1333-fake=True"
    for k in list(r["metrics"]):
        if k.startswith(("cpu_tracked", "step_ms", "first_step", "images_per_s", "rss")):
            r["metrics"][k] = None
            r["null_reasons"][k] = "fake = true: shapes only (FakeTensorMode), nothing real was run or timed"
    r["metrics"].update(fake_tracked_peak_mib=peak_mib, fake_tracked_peak_bytes=int(peak_mib * 2**20),
                        predicted_tensor_peak_mib=peak_mib, predicted_alloc_peak_mib=peak_mib + 93.1,
                        predicted_reserved_peak_mib=peak_mib + 2150.0, predicted_device_used_mib=75672.4,
                        predicted_fits=not enact, predicted_gpu="h100-80gb")
    return r


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two measured tiny cases and two full-size estimates, from a checkout without git."""
    run = tmp_path_factory.mktemp("runs") / "ci-like"
    run.mkdir()
    recs = [json.loads(line) for line in (FIX / "cpu_run" / "records.jsonl").read_text().splitlines()][:2]
    recs += [_fake(recs[0], False, 3525.2), _fake(recs[0], True, 2300.3)]
    for r in recs:
        r["env"]["git_commit"] = None
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = run / "report"
    return out, build_report([run], out)


def _svg_text(path: Path) -> str:
    return path.read_text()


def test_memory_plot_draws_the_estimates_it_has(mixed):
    out, _ = mixed
    svg = _svg_text(out / "memory_per_detector.svg")
    assert "not measured" not in svg
    assert "detr_r50" in svg and "estimate (fake tensors)" in svg
    assert "(estimate)" in svg  # the ENACT estimate's change, labelled as an estimate


def test_time_plot_leaves_untimed_estimates_out_and_names_only_drawn_variants(mixed):
    out, _ = mixed
    svg = _svg_text(out / "step_time_per_detector.svg")
    assert "not measured" not in svg and "detr_r50" not in svg
    assert "cluster_size=6" not in svg  # the estimates' own variant: no bar here, so no legend entry


def test_estimate_table_reads_like_the_other_tables(mixed):
    out, _ = mixed
    html = (out / "report.html").read_text()
    table = html[html.index("Estimated GPU memory of the fake cases"):]
    table = table[:table.index("</table>")]
    assert "75,672" in table and "75672" not in table
    assert ">yes<" in table and ">no<" in table and ">True<" not in table and ">False<" not in table


def test_a_run_without_a_commit_is_labelled_whole(mixed):
    out, _ = mixed
    runs = pd.read_csv(out / "runs.csv")
    assert runs["environment"].str.endswith("· no commit").all(), runs["environment"].tolist()
    assert "no commi " not in (out / "report.html").read_text()
