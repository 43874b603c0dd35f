"""Markdown table of `enact-bench plan --validate --json` files (benchmarks/gpu_check.sh).

    python benchmarks/gpu_check_table.py OUT.md plan-a.json [plan-b.json ...]

One row per (detector, variant, batch size): predicted (the estimate) beside measured on the GPU,
with measured / predicted ratios. Pure Python (no torch), so it runs and is tested anywhere.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("detector", "variant", "batch", "alloc pred MiB", "max_memory_allocated MiB", "ratio",
           "reserved pred MiB", "max_memory_reserved MiB", "ratio", "device pred MiB", "NVML process MiB", "ratio",
           "status")


def _f(v, digits=0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def rows_of(plan: dict) -> list[list[str]]:
    out = []
    for v in plan.get("validation", []):
        p, m, r = v["predicted"], v["measured"], v["ratios"]
        out.append([plan["detector"], v["variant"], str(v["batch_size"]), _f(p["alloc_peak_mib"]),
                    _f(m.get("max_memory_allocated_mib")), _f(r.get("alloc"), 3), _f(p["reserved_peak_mib"]),
                    _f(m.get("max_memory_reserved_mib")), _f(r.get("reserved"), 3), _f(p["device_used_mib"]),
                    _f(m.get("nvml_process_used_peak_mib")), _f(r.get("nvml_process"), 3), m.get("status", "?")])
    return out


def markdown(plans: list[dict], gpu_name: str | None = None) -> str:
    lines = []
    if gpu_name:
        lines.append(f"Measured on {gpu_name}; predicted = `enact-bench plan` (fake tensors, CUDA target, "
                     "caching-allocator model); ratio = measured / predicted.\n")
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
    for plan in plans:
        for row in rows_of(plan):
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def load(paths) -> list[dict]:
    plans = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        plans += data if isinstance(data, list) else [data]
    return plans


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out, paths = Path(argv[0]), argv[1:]
    plans = load(paths)
    gpu = next((p.get("validation_device") for p in plans if p.get("validation_device")), None)
    out.write_text(markdown(plans, gpu))
    print(f"wrote {out} ({sum(len(p.get('validation', [])) for p in plans)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
