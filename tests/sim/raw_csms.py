"""A CSMS written on raw OCPP-J frames, for wire-exact tests of the simulated charger.

It answers the charger's own requests with minimal valid results (or holds or refuses
them when told), records every frame of every connection as parsed JSON, and lets a test
send any frame, valid or not, to the connected charger.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

Frame = list[Any]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _answer(action: str, payload: dict[str, Any], tx_ids: itertools.count[int]) -> Any:
    """A minimal schema-valid result for a request of the charger (1.6 or 2.0.1)."""
    if action == "BootNotification":
        return {"currentTime": _now(), "interval": 60, "status": "Accepted"}
    if action == "Heartbeat":
        return {"currentTime": _now()}
    if action == "Authorize":
        key = "idTagInfo" if "idTag" in payload else "idTokenInfo"
        return {key: {"status": "Accepted"}}
    if action == "StartTransaction":
        return {"transactionId": next(tx_ids), "idTagInfo": {"status": "Accepted"}}
    if action == "NotifyEVChargingNeeds":
        return {"status": "Accepted"}
    return {}


@dataclass
class Connection:
    """One websocket from the charger, and every frame it sent."""

    ws: ServerConnection
    frames: list[Frame] = field(default_factory=list)
    """From the charger."""
    log: list[tuple[str, Frame]] = field(default_factory=list)
    """Both directions in order: ("in", frame from the charger) / ("out", frame to it)."""
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, frame: Frame) -> None:
        self.log.append(("out", frame))
        await self.ws.send(json.dumps(frame))

    def calls(self, action: str | None = None) -> list[Frame]:
        return [f for f in self.frames if f[0] == 2 and (action is None or f[2] == action)]

    def answer_to(self, uid: str) -> Frame | None:
        return next((f for f in self.frames if f[0] in (3, 4) and f[1] == uid), None)


class RawCSMS:
    """Serve one subprotocol-agnostic OCPP-J endpoint on 127.0.0.1."""

    __test__ = False

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.hold: set[str] = set()
        """Actions of the charger left unanswered."""
        self.refuse: dict[str, str] = {}
        """Action → error code to answer with a CALLERROR."""
        self.results: dict[str, Any] = {}
        """Action → the result payload to answer with instead of a valid one."""
        self.interval = 60
        self._server: Server | None = None
        self._tx_ids = itertools.count(1)
        self._ids = itertools.count(1)
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self, *, subprotocols: bool = True) -> RawCSMS:
        """Serve; without ``subprotocols`` the server negotiates none (and accepts a
        client that offers none)."""
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            subprotocols=["ocpp2.0.1", "ocpp1.6"] if subprotocols else None,  # type: ignore[list-item]
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, ws: ServerConnection) -> None:
        conn = Connection(ws)
        self.connections.append(conn)
        try:
            async for raw in ws:
                frame = json.loads(raw)
                conn.frames.append(frame)
                conn.log.append(("in", frame))
                if frame[0] != 2:
                    continue
                uid, action, payload = frame[1], frame[2], frame[3]
                if action in self.hold:
                    continue
                if action in self.refuse:
                    await conn.send([4, uid, self.refuse[action], "refused", {}])
                    continue
                result = self.results.get(action) or _answer(action, payload, self._tx_ids)
                if action == "BootNotification":
                    result["interval"] = self.interval
                await conn.send([3, uid, result])
        except ConnectionClosed:
            pass
        finally:
            conn.closed.set()

    @property
    def last(self) -> Connection:
        return self.connections[-1]

    async def wait(
        self, check: Callable[[], Any], timeout_s: float = 5.0, interval_s: float = 0.005
    ) -> Any:
        """Poll until ``check()`` is truthy; return its value."""
        deadline = time.monotonic() + timeout_s
        while not (value := check()):
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(interval_s)
        return value

    async def connected(self, count: int = 1) -> Connection:
        """The ``count``-th connection, once its BootNotification was answered."""
        await self.wait(
            lambda: (
                len(self.connections) >= count
                and self.connections[count - 1].calls("BootNotification")
            )
        )
        return self.connections[count - 1]

    async def send(self, conn: Connection, frame: Frame) -> None:
        await conn.send(frame)

    async def call(self, conn: Connection, action: str, payload: Any) -> str:
        """Send a CALL; return its unique id."""
        uid = f"csms-{next(self._ids)}"
        await self.send(conn, [2, uid, action, payload])
        return uid

    async def answer(self, conn: Connection, uid: str, timeout_s: float = 5.0) -> Frame:
        """The charger's CALLRESULT / CALLERROR for ``uid``."""
        frame: Frame = await self.wait(lambda: conn.answer_to(uid), timeout_s)
        return frame
