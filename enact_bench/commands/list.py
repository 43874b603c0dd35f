"""`enact-bench list`: shipped suites, registered detectors, data sources and evaluations."""
from __future__ import annotations

import typer

from enact_bench.commands import user_errors


def list_everything() -> dict:
    """Plain body: {"suites": [(name, path, n_cases | error, description)], "detectors": [...], ...}."""
    from enact_bench.data.sources import get_data_source, list_data_sources
    from enact_bench.detectors import get_spec, list_detectors
    from enact_bench.errors import UserInputError
    from enact_bench.evaluate.registry import list_evaluations
    from enact_bench.suite import list_baselines, list_suites, load_suite

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
            "baselines": [(n, str(p)) for n, p in list_baselines().items()]}


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
        console.print("data sources: " + ", ".join(n for n, _ in info["data"]))
        console.print("baselines (check --baseline NAME): "
                      + (", ".join(n for n, _ in info["baselines"]) or "(none shipped)"), highlight=False)
        console.print("evaluations: " + (", ".join(info["evaluations"]) or "(none registered)"))
