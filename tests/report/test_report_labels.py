"""Report labels: the ENACT defaults match EnactConfig(); FakeTensorMode estimates get a table."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from enact_bench.report import build_report
from enact_bench.report.labels import ENACT_DEFAULTS, variant_label

FIX = Path(__file__).parent / "fixtures"
MIB = 2 ** 20


def test_enact_defaults_equal_enact_config_defaults():
    from enact import EnactConfig  # the test may import torch; report/ itself never does

    assert ENACT_DEFAULTS == dataclasses.asdict(EnactConfig())


def test_default_preset_is_labelled_plain_enact():
    from enact import EnactConfig

    assert variant_label(True, dataclasses.asdict(EnactConfig()), "detr") == "ENACT"
    assert variant_label(True, dataclasses.asdict(EnactConfig.reference()), "detr") == "ENACT"
    assert variant_label(True, dataclasses.asdict(EnactConfig(backend="math")), "detr") == "ENACT (backend=math)"


def _fake_records(tmp_path: Path) -> Path:
    """Two cases as `fake = true` writes them: fake_tracked_* set, real memory and time null."""
    base, enact = (json.loads(x) for x in (FIX / "cpu_run" / "records.jsonl").read_text().splitlines()[:2])
    assert not base["case"]["enact"] and enact["case"]["enact"]
    out = []
    for rec, peak_mib in ((base, 2790.7), (enact, 2093.5)):
        rec = json.loads(json.dumps(rec))
        rec["case"].update(detector="detr_r50", fake=True, image_size=[800, 1066])
        if rec["case"]["enact"]:
            rec["case"]["enact_config"] = {**ENACT_DEFAULTS, "cluster_size": 6}
        rec["case_id"] = rec["case_id"].replace("detr_tiny", "detr_r50") + "-fake=True"
        m = rec["metrics"]
        for k in list(m):
            if k.startswith(("cpu_tracked", "rss", "step_ms", "first_step", "images_per_s")):
                m[k] = None
        m.update(fake_tracked_peak_bytes=int(peak_mib * MIB), fake_tracked_peak_mib=peak_mib,
                 fake_tracked_start_bytes=651 * MIB)
        out.append(json.dumps(rec))
    run = tmp_path / "fake_run"
    run.mkdir()
    (run / "records.jsonl").write_text("\n".join(out) + "\n")
    return run


def test_fake_estimates_are_in_a_table_labelled_as_estimates(tmp_path):
    run = _fake_records(tmp_path)
    paths = build_report([run], tmp_path / "report")
    md = paths["report.md"].read_text()
    lines = md.splitlines()
    # the paired table: its header names the estimate, its row carries both figures and the change
    head = next(i for i, ln in enumerate(lines) if "peak tensors, FakeTensorMode estimate baseline (MiB)" in ln)
    row = lines[head + 2]
    assert "detr_r50" in row and "2,791" in row and "2,094" in row and "−25.0 %" in row, row
    assert "ENACT (cluster_size=6)" in md and "backend=sdpa" not in md
    assert "is an estimate, not a measurement" in md
