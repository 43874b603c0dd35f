"""The one metric schema (enact_bench/metrics.py): what is derived from it, and docs/CONTRACTS.md
held to it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from enact_bench import metrics as M

CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "CONTRACTS.md"


def _doc_table_names() -> list[str]:
    text = CONTRACTS.read_text()
    block = text.split("<!-- metrics:begin -->", 1)[1].split("<!-- metrics:end -->", 1)[0]
    return re.findall(r"^\| `([a-z0-9_]+)` \|", block, flags=re.M)


def test_contracts_lists_every_metric_and_nothing_else():
    names = _doc_table_names()
    assert len(names) == len(set(names))
    assert set(names) == set(M.BY_NAME), (set(M.BY_NAME) ^ set(names))
    for needed in ("fake_tracked_peak_bytes", "mem_start_alloc_mib", "timing_clock", "attention_paths"):
        assert needed in names  # the ones the contract used to miss


def test_contracts_table_is_the_generated_one():
    text = CONTRACTS.read_text()
    assert M.markdown_table() in text, "regenerate with `python -m enact_bench.metrics`"


def test_contracts_record_example_uses_schema_names():
    text = CONTRACTS.read_text()
    example = text.split("```json", 1)[1].split("```", 1)[0]
    block = example.split('"metrics": {', 1)[1].split('"null_reasons"', 1)[0]
    keys = set(re.findall(r'"([a-z0-9_]+)":', block)) - {"map", "map_50", "map_75"}  # inside "coco"
    assert "params" in keys and keys <= set(M.BY_NAME) | {"coco"}, keys - set(M.BY_NAME)


def test_derived_lists_follow_the_schema():
    from enact_bench.measure import memory
    from enact_bench.regress import CPU_TOLERANCES, GPU_TOLERANCES, SPREAD_FROM
    from enact_bench.report import labels
    from enact_bench.run.case import FAKE_NOT_MEASURED, METRIC_KEYS

    assert set(memory.CUDA_FIELDS) == {"mem_peak_alloc_mib", "mem_peak_reserved_mib", "mem_start_alloc_mib"}
    assert set(memory.CPU_FIELDS) == {"cpu_tracked_peak_bytes", "cpu_tracked_peak_mib", "cpu_tracked_start_bytes",
                                      "cpu_tracked_late_bytes"}
    # DDP's fields are in torchrun records only (and those have every other field too)
    assert "world_size" not in METRIC_KEYS and "cpu_tracked_peak_bytes_per_rank" not in METRIC_KEYS
    assert set(M.record_metric_names(torchrun=True)) >= set(METRIC_KEYS) | {"world_size", "ddp_bucket_bytes"}
    assert set(memory.NVML_FIELDS) == {"nvml_device_used_peak_mib", "nvml_process_used_peak_mib"}
    assert not any(n.startswith("fake_") for n in METRIC_KEYS)  # a real record has no fake fields
    assert set(FAKE_NOT_MEASURED) | set(M.names(fake=True)) >= set(METRIC_KEYS)
    assert "step_ms_p50" in FAKE_NOT_MEASURED and "params" not in FAKE_NOT_MEASURED
    # the gate: exact counters on CPU, noisy allocator/NVML/time readings only on GPU
    assert CPU_TOLERANCES["cpu_tracked_peak_bytes"] == {"kind": "exact", "rel": 0.0}
    assert "step_ms_p50" not in CPU_TOLERANCES and GPU_TOLERANCES["step_ms_p50"]["kind"] == "noisy"
    assert SPREAD_FROM == {"step_ms_p50": "step_ms_iqr"}
    for name in labels.MEMORY_TABLE + labels.MEMORY_PREFERENCE:
        assert labels.METRICS[name][1] == "MiB"


def test_the_ci_baseline_gates_what_the_schema_gates():
    base = json.loads((CONTRACTS.parents[1] / "suites" / "baselines" / "ci-cpu.json").read_text())
    assert base["tolerances"] == M.tolerances("cpu")


def test_bad_entries_are_refused():
    with pytest.raises(ValueError, match="unit"):
        M.Metric("x_mib", "megabytes", "t", "m")
    with pytest.raises(ValueError, match="written by no case"):
        M.Metric("x", "count", "t", "m", real=False)
    with pytest.raises(ValueError, match="needs a label"):
        M.Metric("x", "MiB", "t", "m", memory_table=True)
    with pytest.raises(KeyError, match="unknown metric"):
        M.metric("nope")
