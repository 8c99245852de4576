"""What the commands that talk to a running gridshare over HTTP share (``dr send``,
``v2g test``): one way to fail (a line on stderr naming the option, and with ``--json``
the JSON error object every command prints) and one way to post."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer


def fail(command: str, code: int, error: str, path: str, message: str,
         as_json: bool) -> NoReturn:
    """Exit ``code`` with ``message``; ``path`` is the option at fault ('' for none)."""
    sys.stderr.write(f"gridshare {command}: {path + ': ' if path else ''}{message}\n")
    if as_json:
        sys.stdout.write(json.dumps({
            "error": error, "problems": [{"file": None, "line": None, "path": path,
                                          "message": message}],
            "more": 0, "exit_code": code}, indent=2) + "\n")
    raise typer.Exit(code)


def post_json(command: str, url: str, body: dict[str, Any], token: str | None,
              timeout_s: float, as_json: bool) -> tuple[int, Any]:
    """POST ``body`` with the bearer ``token``: the status and the decoded answer (None
    when it is not JSON). A bad ``--url`` exits 2, gridshare not answering exits 1."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=timeout_s)
    except httpx.InvalidURL as exc:
        fail(command, 2, "usage", "--url", f"not a URL: {exc}", as_json)
    except httpx.UnsupportedProtocol:
        fail(command, 2, "usage", "--url", f"not an http:// or https:// URL: {url}", as_json)
    except httpx.HTTPError as exc:
        fail(command, 1, "request failed", "", f"{url}: {type(exc).__name__}: "
             f"{exc or 'no answer'} (is gridshare serve running there?)", as_json)
    try:
        answer = response.json()
    except ValueError:
        answer = None
    return response.status_code, answer
