"""The ``gridshare`` command line.

Only typer and the command signatures are imported here; each command imports what it
needs when it runs, so ``gridshare --help`` starts in a fraction of a second.
"""

from __future__ import annotations

import atexit
import gc
import sys
from typing import Annotated, Any

import typer

from gridshare.cli import (
    bill_cmds,
    core_cmds,
    db_cmds,
    dr_cmds,
    plan_charge_cmds,
    plan_cmds,
    serve_cmds,
    simulate_cmds,
    v2g_cmds,
)


class _Program(typer.Typer):
    """The command line as the program being run: the console script and ``python -m
    gridshare`` call it; tests invoke its commands without calling it."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Python collects garbage several times while it shuts down, over every object
        # still alive: with numba, pydantic and numpy loaded that is about 0.3 s of CPU
        # after the command has finished (a quarter of `allocate` at 10,000 chargers).
        # The process is ending and its memory goes back to the system anyway, so the
        # survivors are frozen out of those collections. Commands release what they hold
        # (files, sockets, the audit store) themselves before they return.
        atexit.register(gc.freeze)
        argv = kwargs.get("args", args[0] if args else sys.argv[1:])
        if "--json" not in argv:
            return super().__call__(*args, **kwargs)
        # A script that asked for JSON gets a JSON error object for a usage error too
        # (unknown option, missing argument), caught before any command runs.
        try:
            code = super().__call__(*args, **{**kwargs, "standalone_mode": False})
        except typer.Exit as exc:
            code = exc.exit_code
        except typer.Abort:
            sys.stderr.write("Aborted!\n")
            code = 1
        except typer.TyperException as exc:  # click's usage and parameter errors (vendored)
            exc.show()  # type: ignore[attr-defined]
            _usage_json(exc)
            code = getattr(exc, "exit_code", 2)
        sys.exit(code if isinstance(code, int) else 0)


def _usage_json(exc: Any) -> None:
    import json

    param = getattr(exc, "param", None)
    sys.stdout.write(json.dumps({
        "error": "usage", "problems": [{
            "file": None, "line": None, "path": getattr(param, "name", None) or "",
            "message": exc.format_message()}], "more": 0, "exit_code": exc.exit_code},
        indent=2) + "\n")


app = _Program(
    name="gridshare",
    help="Keep EV charging inside the limits of the wires that feed it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help and usage errors: rich's help renderer (rich, markdown-it) would double
    # the start-up time of `gridshare --help`. Commands still use rich for their tables.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        sys.stdout.write(f"gridshare {version('gridshare')}\n")
        raise typer.Exit(0)


@app.callback(epilog="""\b
Exit codes (each command's --help lists its own):
  0  done as asked
  1  a run-time failure; for allocate, the safety guard replaced the answer
     or an alarm was raised
  2  bad input: usage, or a file that cannot be read or is invalid""")
def _main(
    _show_version: Annotated[bool | None, typer.Option(
        "--version", is_eager=True, callback=_version,
        help="Print the version and exit.")] = None,
) -> None:
    """Options of the program itself, before the command (--version)."""


core_cmds.register(app)
serve_cmds.register(app)
simulate_cmds.register(app)
dr_cmds.register(app)
plan_charge_cmds.register(app)
plan_cmds.register(app)
bill_cmds.register(app)
db_cmds.register(app)
v2g_cmds.register(app)

__all__ = ["app"]
