"""The ``gridshare`` command line.

Only typer and the command signatures are imported here; each command imports what it
needs when it runs, so ``gridshare --help`` starts in a fraction of a second.
"""

from __future__ import annotations

import typer

from gridshare.cli import core_cmds, serve_cmds

app = typer.Typer(
    name="gridshare",
    help="Keep EV charging inside the limits of the wires that feed it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help and usage errors: rich's help renderer (rich, markdown-it) would double
    # the start-up time of `gridshare --help`. Commands still use rich for their tables.
    rich_markup_mode=None,
)
core_cmds.register(app)
serve_cmds.register(app)

__all__ = ["app"]
