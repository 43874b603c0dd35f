"""benchmarks/gpu_check.sh can only run on a GPU; its CPU-side pieces are checked here: the
script parses (bash -n), refuses to run without CUDA (exit 2), and its table writer turns
`plan --validate --json` files into the markdown table."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check_table  # noqa: E402


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks/gpu_check.sh")], check=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path; a CUDA device is present")
def test_gpu_check_script_exits_2_without_cuda(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), str(tmp_path / "out")],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert r.returncode == 2 and "no CUDA device" in r.stderr


def _plan(det, rows):
    return {"detector": det, "validation_device": "NVIDIA H100 80GB HBM3", "validation": [
        {"variant": v, "batch_size": b,
         "predicted": {"tensor_peak_mib": 1000.0, "alloc_peak_mib": pa, "reserved_peak_mib": pr, "device_used_mib": pd},
         "predicted_fits": True,
         "measured": {"status": st, "max_memory_allocated_mib": ma, "max_memory_reserved_mib": mr,
                      "nvml_process_used_peak_mib": mn},
         "ratios": {"alloc": None if ma is None else round(ma / pa, 4), "reserved": None if mr is None else round(mr / pr, 4),
                    "nvml_process": None if mn is None else round(mn / pd, 4)}}
        for v, b, pa, pr, pd, ma, mr, mn, st in rows]}


def test_table_writer_on_fake_records(tmp_path):
    a = tmp_path / "detr.json"
    a.write_text(json.dumps(_plan("detr_r50", [("original", 1, 2000.0, 2100.0, 2650.0, 2100.0, 2205.0, 2800.0, "ok"),
                                               ("enact", 2, 2400.0, 2600.0, 3150.0, None, None, None, "oom")])))
    b = tmp_path / "dino.json"
    b.write_text(json.dumps([_plan("dino_r50_4scale", [("original", 1, 3000.0, 3200.0, 3750.0, 2850.0, 3200.0,
                                                        3700.0, "ok")])]))
    out = tmp_path / "t.md"
    assert gpu_check_table.main([str(out), str(a), str(b)]) == 0
    lines = out.read_text().strip().splitlines()
    assert "NVIDIA H100 80GB HBM3" in lines[0]
    table = [ln for ln in lines if ln.startswith("|")]
    assert len(table) == 2 + 3  # header, rule, three rows
    assert "| detr_r50 | original | 1 | 2,000 | 2,100 | 1.050 | 2,100 | 2,205 | 1.050 | 2,650 | 2,800 | 1.057 | ok |" in table
    assert "| detr_r50 | enact | 2 | 2,400 | - | - | 2,600 | - | - | 3,150 | - | - | oom |" in table
    assert table[-1].startswith("| dino_r50_4scale | original | 1 | 3,000 | 2,850 | 0.950 |")


def test_table_writer_without_arguments_exits_2():
    assert gpu_check_table.main([]) == 2
