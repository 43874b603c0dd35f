"""CLI commands, one module each. Every module here defines `register(app: typer.Typer)`;
enact_bench.cli discovers them, so adding a command is adding a module (its body a plain
function that tests and other code can call without Typer)."""
from __future__ import annotations

import errno
import functools
import os
import warnings
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


def run_dirs_or_latest(run_dirs: "list[Path] | None") -> "list[Path]":
    """The run folders given, else the latest run under reports/ (said on stderr, so that the
    output says which run it is about)."""
    if run_dirs:
        return [*run_dirs]  # not list(): the `list` command's module shadows the builtin in this package
    from enact_bench.console import err_console
    from enact_bench.records import latest_run_dir

    latest = latest_run_dir()
    err_console.print(f"run: {latest} (the latest under reports/)", highlight=False, soft_wrap=True)
    return [latest]


# what a full or read-only disk raises on a write: one line, not a traceback
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def write_error_text(e: OSError) -> str:
    where = f"{e.filename}: " if e.filename else ""
    return f"cannot write {where}{e.strerror or e}"


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one plain line on stderr ("warning: ..."), without its source line."""
    from enact_bench.console import err_console

    text = " ".join(str(message).split())
    err_console.print(f"[yellow]warning:[/] {_escape(text)}", highlight=False, markup=True, soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape
    return escape(text)


def user_errors(fn):
    """Print a UserInputError (or a full disk's OSError) as one red line and exit 2, without a
    traceback; Ctrl-C exits 130. Warnings print as one plain line each."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_warning
                return fn(*args, **kwargs)
        except (UserInputError, OSError) as e:
            if isinstance(e, OSError) and e.errno not in WRITE_ERRNOS:
                raise
            from enact_bench.console import err_console
            text = str(e) if isinstance(e, UserInputError) else write_error_text(e)
            # escape: messages name TOML tables ([defaults], [matrix]) that rich would eat as markup
            err_console.print(f"[red]error:[/] {_escape(text)}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            from enact_bench.console import err_console
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
    return wrapper
