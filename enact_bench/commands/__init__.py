"""CLI commands, one module each. Every module here defines `register(app: typer.Typer)`;
enact_bench.cli discovers them, so adding a command is adding a module (its body a plain
function that tests and other code can call without Typer)."""
from __future__ import annotations

import functools

import typer

from enact_bench.errors import UserInputError


def user_errors(fn):
    """Print a UserInputError as one red line and exit 2, without a traceback; Ctrl-C exits 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserInputError as e:
            from enact_bench.console import err_console
            err_console.print(f"[red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            from enact_bench.console import err_console
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
    return wrapper
