"""The `enact-bench` command line: a Typer app whose commands live in enact_bench/commands/.

Each module there defines `register(app)`; they are discovered here, so a new command is a new
module and nothing else changes.
"""
from __future__ import annotations

import importlib
import pkgutil

import typer

import enact_bench.commands as _commands

app = typer.Typer(name="enact-bench", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False,
                  help="Memory, time, FLOPs and mAP of detection transformers with and without ENACT.")


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{_commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


def package_version() -> str:
    """The installed distribution's version (importlib.metadata), else enact_bench.__version__
    (a checkout run with PYTHONPATH, not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("enact-bench")
    except PackageNotFoundError:
        import enact_bench

        return enact_bench.__version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"enact-bench {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Memory, time, FLOPs and mAP of detection transformers with and without ENACT."""


_register_all()


def main() -> None:
    """The console entry point: the command, then a quick exit. Every file the commands write is
    closed by a `with` block when they return, so after flushing the standard streams and running
    the atexit handlers nothing is left to do but the interpreter's teardown of torch and
    torch._dynamo, about 1 s on a 2-core machine; os._exit skips it."""
    import atexit
    import os
    import sys

    try:
        app()
        code = 0
    except SystemExit as e:  # click ends every command with sys.exit
        code = e.code
    if code is not None and not isinstance(code, int):  # sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head): nothing more can be written
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    main()
