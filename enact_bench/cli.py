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
    app()


if __name__ == "__main__":
    main()
