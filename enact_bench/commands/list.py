"""`enact-bench list`: shipped suites, registered detectors, the GPUs `plan` knows, data sources and evaluations."""
from __future__ import annotations

import typer

from enact_bench.commands import user_errors


def list_everything() -> dict:
    """Plain body: {"suites": [(name, path, n_cases | error, description)], "detectors": [...], ...}."""
    from enact_bench.data.sources import get_data_source, list_data_sources
    from enact_bench.detectors import get_spec, list_detectors
    from enact_bench.errors import UserInputError
    from enact_bench.evaluate.registry import list_evaluations
    from enact_bench.regress import list_baselines
    from enact_bench.suite.load import list_suites, load_suite

    suites = []
    for name, path in list_suites().items():
        try:
            s = load_suite(str(path))
            suites.append((name, str(path), len(s.cases), s.description))
        except UserInputError as e:
            suites.append((name, str(path), None, f"invalid: {e}"))
    detectors = [(n, get_spec(n).family, get_spec(n).tiny, get_spec(n).description) for n in list_detectors()]
    sources = [(n, get_data_source(n).description) for n in list_data_sources()]
    return {"suites": suites, "detectors": detectors, "data": sources, "evaluations": list_evaluations(),
            "baselines": [(n, str(p)) for n, p in list_baselines().items()], "gpus": gpu_rows()}


def gpu_rows() -> list[dict]:
    """The GPU table `enact-bench plan --gpu` knows (predict/gpus.py): memory as NVML and CUDA see
    it, and what the plan estimates the CUDA context and library workspaces at."""
    from enact_bench.metrics import MIB
    from enact_bench.predict.gpus import GPUS, library_workspace_bytes

    return [{"name": g.name, "aliases": list(g.aliases), "memory_mib": g.memory_mib, "usable_mib": g.usable_mib,
             "usable_is_estimate": g.cuda_total_mib is None, "context_mib": g.context_mib,
             "workspaces_mib": round(sum(library_workspace_bytes(g)) / MIB, 2),
             "compute_capability": f"{g.compute_capability[0]}.{g.compute_capability[1]}"} for g in GPUS.values()]


def register(app: typer.Typer) -> None:
    @app.command("list")
    @user_errors
    def list_() -> None:
        """Shipped suites and registered detectors (and data sources, evaluations)."""
        from rich.table import Table

        from enact_bench.console import console

        info = list_everything()
        t = Table(title="suites")
        for col in ("suite", "cases", "description"):
            t.add_column(col)
        for name, _path, n, desc in info["suites"]:
            t.add_row(name, "-" if n is None else str(n), desc)
        console.print(t)
        t = Table(title="detectors")
        for col in ("detector", "family", "tiny", "description"):
            t.add_column(col)
        for name, family, tiny, desc in info["detectors"]:
            t.add_row(name, family, "yes" if tiny else "", desc)
        console.print(t)
        t = Table(title="GPUs (enact-bench plan --gpu NAME; context and workspaces are ESTIMATES, docs/gpu-estimate.md)")
        for col in ("gpu", "aliases", "memory MiB (NVML)", "usable MiB", "CUDA context MiB", "cuBLAS + cuBLASLt workspaces MiB",
                    "compute capability"):
            t.add_column(col, justify="right" if "MiB" in col else "left")
        for g in info["gpus"]:
            t.add_row(g["name"], ", ".join(g["aliases"]), f"{g['memory_mib']:,}",
                      f"{g['usable_mib']:,}" + (" (est.)" if g["usable_is_estimate"] else ""),
                      f"{g['context_mib']:,.0f}", f"{g['workspaces_mib']:,.2f}", g["compute_capability"])
        console.print(t)
        console.print("data sources: " + ", ".join(n for n, _ in info["data"]))
        console.print("baselines (check --baseline NAME): "
                      + (", ".join(n for n, _ in info["baselines"]) or "(none shipped)"), highlight=False)
        console.print("evaluations: " + (", ".join(info["evaluations"]) or "(none registered)"))
