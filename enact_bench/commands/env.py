"""`enact-bench env`: what records will say about this machine."""
from __future__ import annotations

import typer

from enact_bench.commands import user_errors


def environment(device: str = "auto") -> dict:
    """Plain body: capture_env for `device` plus whether CUDA and NVML are usable."""
    from enact_bench.measure.memory import NvmlSampler
    from enact_bench.records import capture_env
    from enact_bench.suite.load import resolve_device

    dev = resolve_device(device)
    env = capture_env(dev)
    import torch
    env["cuda_available"] = torch.cuda.is_available()
    reasons = NvmlSampler(dev).null_reasons
    env["nvml"] = "available" if not reasons else next(iter(reasons.values()))
    return env


def register(app: typer.Typer) -> None:
    @app.command("env")
    @user_errors
    def env(device: str = typer.Option("auto", help="auto | cuda | cpu")) -> None:
        """Device, driver, library versions and numeric settings, as records capture them."""
        from rich.table import Table

        from enact_bench.console import console

        t = Table(title="environment", show_header=False)
        t.add_column("key")
        t.add_column("value")
        for k, v in environment(device).items():
            t.add_row(k, str(v))
        console.print(t)
