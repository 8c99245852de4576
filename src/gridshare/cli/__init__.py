"""The ``gridshare`` command line."""

from __future__ import annotations

import importlib

import typer

from gridshare.cli import core_cmds

app = typer.Typer(
    name="gridshare",
    help="Keep EV charging inside the limits of the wires that feed it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
core_cmds.register(app)

try:  # the live system's commands (serve, demo) register themselves when present
    serve_cmds = importlib.import_module("gridshare.cli.serve_cmds")
except ModuleNotFoundError as exc:  # pragma: no cover - only while a part is being built
    if exc.name != "gridshare.cli.serve_cmds":
        raise
else:
    serve_cmds.register(app)

__all__ = ["app"]
