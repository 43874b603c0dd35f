"""CLI commands, one module each. Every module here defines `register(app: typer.Typer)`;
enact_bench.cli discovers them, so adding a command is adding a module (its body a plain
function that tests and other code can call without Typer)."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import typer

from enact_bench.errors import UserInputError


def output_folder(path: str | os.PathLike, option: str) -> Path:
    """`path` as a folder that exists or can be created; else a UserInputError naming `option`
    (a file in the way, at the path or at one of its parents)."""
    p = Path(path).expanduser()
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                where = "is a file" if q == p else f"cannot hold folders: {q} is a file"
                raise UserInputError(f"{option} {path}: {where}; expected a folder (or a path where one can be created)")
            if not os.access(q, os.W_OK | os.X_OK):
                raise UserInputError(f"{option} {path}: {q} is not writable; expected a folder you can write to")
            break
    return p


def user_errors(fn):
    """Print a UserInputError as one red line and exit 2, without a traceback; Ctrl-C exits 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserInputError as e:
            from rich.markup import escape

            from enact_bench.console import err_console
            # escape: messages name TOML tables ([defaults], [matrix]) that rich would eat as markup
            err_console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            from enact_bench.console import err_console
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
    return wrapper
