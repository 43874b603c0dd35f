"""Summary rows from records (no torch): one row per case, and baseline/ENACT pairs.

A pair is a baseline case and an ENACT case with the same enact_bench.records.pair_key: every
case field but the variant (`enact`, `enact_config`, `attention`, `family`) and its checkpoint. Memory is the CUDA allocator peak where there is one, else the
CPU live-tensor peak (the `memory_kind` column says which); time is the median step with the
spread of the timed steps (p10 to p90). A time difference is a percentage only when the two
spreads do not overlap; otherwise it is within the noise of the measurement (`time_within_noise`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from enact_bench.metrics import MIB
from enact_bench.records import Record, latest_per_case, pair_key


def memory_of(rec: Record) -> tuple[float | None, str]:
    m = rec.metrics
    if m.get("mem_peak_alloc_mib") is not None:
        return m["mem_peak_alloc_mib"], "cuda_alloc"
    if m.get("cpu_tracked_peak_mib") is not None:
        return m["cpu_tracked_peak_mib"], "cpu_tracked"
    if m.get("fake_tracked_peak_mib") is not None:  # fake = true: FakeTensorMode estimate
        return m["fake_tracked_peak_mib"], "fake_estimate"
    return None, "-"


def own_memory_of(rec: Record) -> float | None:
    """The measured step's own peak: peak minus what was alive when it began (MiB)."""
    m = rec.metrics
    if m.get("mem_peak_alloc_mib") is not None and m.get("mem_start_alloc_mib") is not None:
        return m["mem_peak_alloc_mib"] - m["mem_start_alloc_mib"]
    if m.get("cpu_tracked_peak_bytes") is not None and m.get("cpu_tracked_start_bytes") is not None:
        return (m["cpu_tracked_peak_bytes"] - m["cpu_tracked_start_bytes"]) / MIB
    return None


def change_pct(base: float | None, new: float | None) -> float | None:
    if base is None or new is None or base == 0:
        return None
    return (new - base) / base * 100.0


MIN_STEPS_FOR_SPREAD = 3  # fewer timed steps give no spread to judge a difference by


def _present(v) -> bool:
    return v is not None and v == v  # not None, not NaN (the report's frames)


def time_spread(rec: Record | dict) -> tuple[float | None, float | None]:
    """(p10, p90) of the case's timed steps in ms (a Record, or a dict of its metrics); (None,
    None) when not recorded or when fewer than MIN_STEPS_FOR_SPREAD steps were timed."""
    m = rec.metrics if isinstance(rec, Record) else rec
    n, lo, hi = m.get("step_count"), m.get("step_ms_p10"), m.get("step_ms_p90")
    if not (_present(lo) and _present(hi)) or (_present(n) and n < MIN_STEPS_FOR_SPREAD):
        return None, None
    return float(lo), float(hi)


def within_noise(base: Record | dict, enact: Record | dict) -> bool | None:
    """True when the two cases' step-time spreads (p10 to p90) overlap: the medians' difference
    is then no larger than what either case varies by from step to step. None when either case
    has no spread (not recorded, or fewer than MIN_STEPS_FOR_SPREAD timed steps): then no
    difference can be told from noise."""
    (lo_b, hi_b), (lo_e, hi_e) = time_spread(base), time_spread(enact)
    if None in (lo_b, hi_b, lo_e, hi_e):
        return None
    return not (hi_e < lo_b or hi_b < lo_e)


def case_rows(records: Iterable[Record]) -> list[dict]:
    rows = []
    for rec in latest_per_case(records):
        mem, kind = memory_of(rec)
        m = rec.metrics
        rows.append({"case_id": rec.case_id, "status": rec.status, "memory_mib": mem, "memory_kind": kind,
                     "step_ms_p50": m.get("step_ms_p50"), "step_ms_spread": time_spread(rec), "images_per_s": m.get("images_per_s"),
                     "gflops_fwd": m.get("gflops_fwd"), "enact_key_len_after": m.get("enact_key_len_after"),
                     "error": (rec.error or "").splitlines()[0] if rec.error else ""})
    return rows


@dataclass
class Pair:
    base: Record
    enact: Record

    @property
    def label(self) -> str:
        c = self.base.case
        size = "x".join(map(str, c["image_size"])) if c.get("image_size") else c.get("image_size_dist") or "-"
        return f"{c['detector']} {c['mode']} b{c['batch_size']} {size}"

    def row(self) -> dict:
        mb, kind = memory_of(self.base)
        me, _ = memory_of(self.enact)
        tb, te = self.base.metrics.get("step_ms_p50"), self.enact.metrics.get("step_ms_p50")
        return {"pair": self.label, "enact_case": self.enact.case_id, "memory_kind": kind,
                "mem_base_mib": mb, "mem_enact_mib": me, "mem_change_pct": change_pct(mb, me),
                "own_mem_change_pct": change_pct(own_memory_of(self.base), own_memory_of(self.enact)),
                "ms_base": tb, "ms_enact": te, "time_change_pct": change_pct(tb, te),
                "ms_base_spread": time_spread(self.base), "ms_enact_spread": time_spread(self.enact),
                "time_within_noise": within_noise(self.base, self.enact),
                "status": f"{self.base.status}/{self.enact.status}"}


def pairs(records: Iterable[Record]) -> list[Pair]:
    latest = latest_per_case(records)
    bases = {pair_key(r.case): r for r in latest if not r.case.get("enact")}
    return [Pair(bases[pair_key(r.case)], r) for r in latest if r.case.get("enact") and pair_key(r.case) in bases]
