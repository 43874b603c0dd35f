"""Rich rendering shared by the CLI commands (tables of cases and baseline/ENACT pairs)."""
from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

from enact_bench.summary import case_rows, pairs

def _console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr)
    if not c.is_terminal and "COLUMNS" not in os.environ:  # logs and CI: do not squeeze tables to 80
        c = Console(stderr=stderr, width=160)
    return c


console = _console()
err_console = _console(stderr=True)


def _num(x, fmt="{:,.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _pct(x) -> str:
    if x is None:
        return "-"
    colour = "green" if x < 0 else "red" if x > 0 else ""
    text = f"{x:+.1f}%"
    return f"[{colour}]{text}[/]" if colour else text


def _ms(median, spread=(None, None)) -> str:
    """A step time: the median, then the spread of the timed steps (p10-p90) when recorded."""
    if median is None:
        return "-"
    lo, hi = spread
    return f"{median:,.1f}" + (f" ({lo:,.0f}-{hi:,.0f})" if lo is not None and hi is not None else "")


def _time_change(pct, within_noise) -> str:
    """A percentage only when the difference lies outside the steps' spread: "~" within it,
    "-" when there is no spread to tell (fewer than 3 timed steps)."""
    if within_noise is None:
        return "-"
    return "[dim]~[/]" if within_noise else _pct(pct)


def cases_table(records, title="cases") -> Table:
    t = Table(title=title)
    for col in ("case", "status", "memory MiB", "kind", "step ms (p10-p90)", "img/s", "GFLOPs fwd",
                "keys after ENACT"):
        t.add_column(col, justify="left" if col in ("case", "status", "kind") else "right")
    for r in case_rows(records):
        status = {"ok": "[green]ok[/]", "oom": "[yellow]oom[/]"}.get(r["status"], f"[red]{r['status']}[/]")
        keys = r["enact_key_len_after"]
        t.add_row(r["case_id"], status, _num(r["memory_mib"]), r["memory_kind"],
                  _ms(r["step_ms_p50"], r["step_ms_spread"]),
                  _num(r["images_per_s"], "{:,.2f}"), _num(r["gflops_fwd"], "{:,.2f}"),
                  "-" if keys is None else ",".join(map(str, keys)))
    return t


def pairs_table(records, title="baseline vs ENACT") -> Table | None:
    ps = pairs(records)
    if not ps:
        return None
    kinds = sorted({p.row()["memory_kind"] for p in ps})
    t = Table(title=title, caption="memory: " + ", ".join(
        {"cuda_alloc": "CUDA max_memory_allocated", "cpu_tracked": "CPU live-tensor peak"}.get(k, k) for k in kinds)
        + "; Δ own: change of the step's own peak (peak minus what was alive before it); time: median step "
        "(p10-p90 of the timed steps); Δ time ~: within noise (the two spreads overlap), -: under 3 timed "
        "steps, no spread to tell")
    for col in ("case (ENACT variant)", "MiB base", "MiB ENACT", "Δ mem", "Δ own", "ms base", "ms ENACT", "Δ time",
                "status"):
        t.add_column(col, justify="left" if col.startswith("case") or col == "status" else "right")
    for p in ps:
        r = p.row()
        t.add_row(r["enact_case"], _num(r["mem_base_mib"]), _num(r["mem_enact_mib"]), _pct(r["mem_change_pct"]),
                  _pct(r["own_mem_change_pct"]), _ms(r["ms_base"], r["ms_base_spread"]),
                  _ms(r["ms_enact"], r["ms_enact_spread"]), _time_change(r["time_change_pct"], r["time_within_noise"]),
                  r["status"])
    return t


def print_summary(records) -> None:
    console.print(cases_table(records))
    pt = pairs_table(records)
    if pt is not None:
        console.print(pt)
    errors = [r for r in case_rows(records) if r["error"]]
    for r in errors:
        err_console.print(f"[red]{r['case_id']}[/]: {r['status']}: {r['error']}")
