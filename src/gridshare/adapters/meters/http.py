"""Polling one meter's JSON endpoint: one request in flight, never a pile-up.

Each poll waits for its answer (or its timeout) before the next one is planned, so a slow
device is asked less often instead of being buried under requests. After a failure the
pause doubles up to ``max(interval, BACKOFF_MAX)``: a device that is off the network is
not hammered, and one that comes back is read again within seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import httpx

from gridshare.adapters.meters.parse import PAYLOAD_MAX

log = logging.getLogger("gridshare.meters")

BACKOFF_MAX = 10.0


def public_url(url: str) -> str:
    """``url`` without a password in it (it is shown in logs and in /status)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def request_timeout(interval: float) -> float:
    """Seconds one poll may take in all: the interval, but at least 1 s."""
    return max(1.0, interval)


class FetchError(Exception):
    """A poll that gave no body to parse (status, timeout, connection, size)."""


async def fetch(client: httpx.AsyncClient, url: str, limit_s: float) -> bytes:
    """The body of a 2xx answer, read within ``limit_s`` s in all and at most
    :data:`PAYLOAD_MAX` bytes; anything else is a :class:`FetchError` that says why."""
    try:
        async with asyncio.timeout(limit_s):
            async with client.stream("GET", url, headers={"Accept": "application/json"},
                                     timeout=limit_s) as response:
                if not response.is_success:
                    raise FetchError(f"HTTP {response.status_code} "
                                     f"{response.reason_phrase}".rstrip())
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > PAYLOAD_MAX:
                        raise FetchError(f"answer larger than {PAYLOAD_MAX} bytes")
                return bytes(body)
    except TimeoutError:
        raise FetchError(f"no answer within {limit_s:g} s") from None
    except httpx.TimeoutException:
        raise FetchError(f"no answer within {limit_s:g} s") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise FetchError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None


class HttpPoller:
    """Polls one meter's ``url`` every ``interval`` s and hands each body over."""

    def __init__(self, url: str, interval: float, client: httpx.AsyncClient,
                 on_body: Callable[[bytes], bool], on_error: Callable[[str], None]) -> None:
        self._url = url
        self._interval = interval
        self._client = client
        self._on_body = on_body
        """Returns whether the body gave a reading (a bad one backs off like a failure)."""
        self._on_error = on_error
        self.polls = 0

    async def run(self) -> None:
        """Poll until cancelled; never raises for what the endpoint does."""
        loop = asyncio.get_running_loop()
        timeout = request_timeout(self._interval)
        delay = self._interval
        while True:
            started = loop.time()
            self.polls += 1
            try:
                body = await fetch(self._client, self._url, timeout)
            except FetchError as exc:
                self._on_error(str(exc))
                good = False
            except Exception as exc:  # a bug, not the device: say so, keep polling
                log.exception("polling %s failed", public_url(self._url))
                self._on_error(f"{type(exc).__name__}: {exc}")
                good = False
            else:
                good = self._on_body(body)
            if good:
                delay = self._interval
                pause = max(0.0, started + delay - loop.time())
            else:
                delay = min(delay * 2, max(self._interval, BACKOFF_MAX))
                pause = delay
            await asyncio.sleep(pause)
