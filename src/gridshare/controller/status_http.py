"""A minimal read-only HTTP endpoint: ``GET /status`` → the controller's status as JSON.

Plain asyncio, no framework: it exists so an operator (or a test) can look at a running
``gridshare serve`` before the real REST API arrives. One request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_MAX_HEADER_BYTES = 16 * 1024


class StatusServer:
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._client, host, port)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        for task in list(self._clients):
            task.cancel()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEADER_BYTES:
                raise ValueError("header too large")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._send(writer, 405, {"error": "method not allowed"}, method)
            elif path in ("/status", "/status/"):
                await self._send(writer, 200, self._status(), method)
            elif path == "/":
                await self._send(writer, 200, {"status": "/status"}, method)
            else:
                await self._send(writer, 404, {"error": "not found"}, method)
        except (TimeoutError, ValueError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception:
            log.exception("status endpoint failed")
            with contextlib.suppress(Exception):
                await self._send(writer, 500, {"error": "internal error"}, "GET")
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, code: int, body: dict[str, Any],
                    method: str) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
                  500: "Internal Server Error"}[code]
        data = json.dumps(body, separators=(",", ":")).encode()
        head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\n"
                f"Connection: close\r\n\r\n").encode()
        writer.write(head if method == "HEAD" else head + data)
        await writer.drain()
