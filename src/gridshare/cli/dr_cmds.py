"""``gridshare dr send``: post one demand-response signal to a running gridshare.

It is a client of ``POST /api/v1/dr/signals`` (docs/api.md), so a signal sent from the
command line is validated, stored and answered exactly as one from a utility's system.
httpx is imported when the command runs: ``gridshare --help`` pays for none of it.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from gridshare.cli.remote import fail, post_json

DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "GRIDSHARE_API_TOKEN"
TIMEOUT_S = 10.0

SEND_EPILOG = """\b
Exit codes:
  0  the signal is stored (201), or was already, with the same content (200)
  1  a run-time failure: gridshare cannot be reached or answers with an error
     (no or a wrong token: 401/403; a server error)
  2  bad input: usage (none or two of --curtail/--shed/--restore, a --start
     without a UTC offset), or gridshare refused the signal: invalid (422) or
     its --signal-id taken by another signal (409)"""

dr_app = typer.Typer(name="dr", help="Demand response: send a signal to a running gridshare.",
                     no_args_is_help=True, add_completion=False,
                     pretty_exceptions_enable=False, rich_markup_mode=None)


def send_cmd(
    zone: Annotated[str, typer.Option(
        "--zone", metavar="ZONE", help="Zone id (the site file's zones:).",
        show_default=False)],
    curtail: Annotated[float | None, typer.Option(
        "--curtail", metavar="KW", min=0, help="CURTAIL: lower the zone's draw by KW, "
        "stations dimmed.")] = None,
    shed: Annotated[float | None, typer.Option(
        "--shed", metavar="KW", min=0, help="SHED: lower the zone's draw by KW, whole "
        "stations paused.")] = None,
    restore: Annotated[bool, typer.Option(
        "--restore", help="RESTORE: end the zone's events of this priority or a lower "
        "urgency.")] = False,
    minutes: Annotated[float, typer.Option(
        "--minutes", metavar="MIN",
        help="How long the event lasts from --start (more than 0).")] = 60.0,
    priority: Annotated[int, typer.Option(
        "--priority", metavar="1|2|3", min=1, max=3,
        help="1 emergency, 2 economic, 3 optional.")] = 2,
    start: Annotated[str | None, typer.Option(
        "--start", metavar="TIME", help="ISO 8601 with a UTC offset (default: now).",
        show_default=False)] = None,
    signal_id: Annotated[str | None, typer.Option(
        "--signal-id", metavar="ID", help="Id of the signal (default: a new UUID); send "
        "the same id again to redeliver it.", show_default=False)] = None,
    url: Annotated[str, typer.Option(
        "--url", metavar="URL", help="The running gridshare's API.")] = DEFAULT_URL,
    token: Annotated[str | None, typer.Option(
        "--token", metavar="TOKEN", envvar=TOKEN_ENV, show_envvar=True,
        help="An API token (as given to gridshare serve).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option(
        "--json/--no-json", help="Print the stored event as JSON (also on failure: "
        '{"error", "problems", "exit_code"}).')] = False,
) -> None:
    """Send one signal (CURTAIL, SHED or RESTORE) for a zone to a running gridshare, e.g.
    gridshare dr send --zone Z1 --curtail 90 --minutes 60 --priority 1"""
    chosen = [name for name, given in (("--curtail", curtail is not None),
                                       ("--shed", shed is not None), ("--restore", restore))
              if given]
    if len(chosen) != 1:
        fail("dr send", 2, "usage", "--curtail/--shed/--restore",
             "give exactly one of --curtail KW, --shed KW, --restore"
             + (f" (got {' and '.join(chosen)})" if chosen else ""), as_json)
    if not minutes > 0 or minutes == float("inf"):
        fail("dr send", 2, "usage", "--minutes",
             f"must be a number of minutes > 0 (got {minutes:g})", as_json)
    begin = _start(start, as_json)
    kind, target = ("CURTAIL", curtail) if curtail is not None else (
        ("SHED", shed) if shed is not None else ("RESTORE", 0.0))
    body = {
        "signal_id": signal_id or str(uuid.uuid4()), "zone_id": zone, "signal_type": kind,
        "target_reduction_kw": target, "start_ts": _iso(begin),
        "end_ts": _iso(begin + timedelta(minutes=minutes)), "priority": priority,
        "received_ts": _iso(datetime.now(UTC)),
    }
    status, answer = post_json("dr send", url.rstrip("/") + "/api/v1/dr/signals", body, token,
                               TIMEOUT_S, as_json)
    if status in (200, 201):
        _done(status, answer, as_json)
        return
    detail = answer.get("detail") if isinstance(answer, dict) else None
    detail = detail or f"HTTP {status}"
    if status in (409, 422):
        where, reason = _reason(answer)
        fail("dr send", 2, "signal refused", where, f"{reason or detail} (HTTP {status})", as_json)
    fail("dr send", 1, "request failed", "", f"{url}: {detail} (HTTP {status})", as_json)


def _start(text: str | None, as_json: bool) -> datetime:
    if text is None:
        return datetime.now(UTC).replace(microsecond=0)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        fail("dr send", 2, "usage", "--start", f"not an ISO 8601 time: {text!r}", as_json)
    if value.tzinfo is None:
        fail("dr send", 2, "usage", "--start", f"{text!r} has no UTC offset (add Z or +01:00)",
             as_json)
    return value


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _reason(answer: Any) -> tuple[str, str | None]:
    """The refused field (``zone_id``) and the reason from a problem's ``errors``, when it
    names one (a 422); else no field and no reason of its own."""
    errors = answer.get("errors") if isinstance(answer, dict) else None
    if errors and isinstance(errors[0], dict):
        loc = [str(p) for p in errors[0].get("loc", []) if p != "body"]
        msg = errors[0].get("msg")
        return ".".join(loc), msg if isinstance(msg, str) else None
    return "", None


def _done(status: int, event: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(event, indent=2) + "\n")
        return
    verb = "stored" if status == 201 else "already stored (same content)"
    if isinstance(event, dict):
        sys.stdout.write(
            f"signal {event.get('signal_id')} {verb}: {event.get('signal_type')} "
            f"{event.get('target_reduction_kw')} kW in zone {event.get('zone_id')}, "
            f"{event.get('start_ts')} to {event.get('end_ts')}, priority "
            f"{event.get('priority')}, {event.get('state')}\n")
    else:
        sys.stdout.write(f"signal {verb}\n")


dr_app.command("send", epilog=SEND_EPILOG)(send_cmd)


def register(app: typer.Typer) -> None:
    app.add_typer(dr_app, name="dr")


__all__ = ["register", "send_cmd"]
