"""Rich rendering shared by the CLI commands (tables of cases and baseline/ENACT pairs)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from enact_bench.summary import case_rows, pairs

console = Console()
err_console = Console(stderr=True)


def _num(x, fmt="{:,.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _pct(x) -> str:
    if x is None:
        return "-"
    colour = "green" if x < 0 else "red" if x > 0 else ""
    text = f"{x:+.1f}%"
    return f"[{colour}]{text}[/]" if colour else text


def cases_table(records, title="cases") -> Table:
    t = Table(title=title)
    for col in ("case", "status", "memory MiB", "kind", "step ms p50", "img/s", "GFLOPs fwd", "keys after ENACT"):
        t.add_column(col, justify="left" if col in ("case", "status", "kind") else "right")
    for r in case_rows(records):
        status = {"ok": "[green]ok[/]", "oom": "[yellow]oom[/]"}.get(r["status"], f"[red]{r['status']}[/]")
        keys = r["enact_key_len_after"]
        t.add_row(r["case_id"], status, _num(r["memory_mib"]), r["memory_kind"], _num(r["step_ms_p50"]),
                  _num(r["images_per_s"], "{:,.2f}"), _num(r["gflops_fwd"], "{:,.2f}"),
                  "-" if keys is None else ",".join(map(str, keys)))
    return t


def pairs_table(records, title="baseline vs ENACT") -> Table | None:
    ps = pairs(records)
    if not ps:
        return None
    t = Table(title=title)
    for col in ("pair", "memory", "base MiB", "ENACT MiB", "Δ mem", "base ms", "ENACT ms", "Δ time", "status"):
        t.add_column(col, justify="left" if col in ("pair", "memory", "status") else "right")
    for p in ps:
        r = p.row()
        t.add_row(r["pair"], r["memory_kind"], _num(r["mem_base_mib"]), _num(r["mem_enact_mib"]),
                  _pct(r["mem_change_pct"]), _num(r["ms_base"]), _num(r["ms_enact"]), _pct(r["time_change_pct"]),
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
