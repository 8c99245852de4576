"""The simulated chargers' websocket client: websockets' own protocol, lean asyncio glue.

One Python process plays up to thousands of chargers, so what each frame costs in it
bounds how fast "every charger answered" can be measured (benchmarks/bench_control.py).
``websockets.asyncio.client`` wraps every frame in machinery a simulated charger does not
use (a message assembler with futures and flow-control queues, a send lock and an async
context manager per frame, keepalive bookkeeping): measured, the simulator spent ≈155 µs
of CPU per SetChargingProfile answered through it, ≈127 µs through this module.

Only the glue to asyncio is ours. The handshake, framing, masking, UTF-8 and size checks,
automatic pongs and the closing handshake are websockets' Sans-I/O
:class:`~websockets.client.ClientProtocol`, so the simulator still speaks RFC 6455 exactly
as before, and failures raise websockets' exceptions (``InvalidStatus`` for a refused
handshake, ``ConnectionClosedOK`` / ``ConnectionClosedError`` once the link is gone).
The surface is what the simulator uses of ``ClientConnection``: :attr:`subprotocol`,
:meth:`send`, ``async for message in ws``, :meth:`recv` and :meth:`close`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl as ssl_mod
from collections.abc import Mapping, Sequence
from typing import Any

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidMessage
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import USER_AGENT, Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

QUEUE_HIGH = 16
"""Messages received and not yet read at which the socket stops being read (as
websockets' ``max_queue``): a CSMS that floods a charger waits in its own buffers."""
QUEUE_LOW = 4
"""... and at which reading resumes."""
MAX_SIZE = 2**20
"""Largest message accepted (websockets' default): a bigger one closes the link (1009)."""


class SimWebSocket(asyncio.Protocol):
    """One client websocket. Made by :func:`connect`, which returns it once open."""

    def __init__(self, protocol: ClientProtocol, close_timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.protocol = protocol
        self.close_timeout = close_timeout
        self.transport: asyncio.Transport | None = None
        self._messages: collections.deque[str | bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._opened: asyncio.Future[None] = self.loop.create_future()
        self._lost: asyncio.Future[None] = self.loop.create_future()
        self._fragments: list[bytes] = []
        self._fragmented_text = False
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._abort_timer: asyncio.TimerHandle | None = None

    @property
    def subprotocol(self) -> Subprotocol | None:
        """The subprotocol the CSMS chose (None: it chose none)."""
        return self.protocol.subprotocol

    # -- what the simulator calls

    def __aiter__(self) -> SimWebSocket:
        return self

    async def __anext__(self) -> str | bytes:
        """The next message; the iteration ends when the link closed normally (1000/1001)
        and raises ConnectionClosedError when it did not, as websockets' own client."""
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    async def recv(self) -> str | bytes:
        """The next message (str for a text frame); ConnectionClosed once the link is
        gone and every message received before was read."""
        messages = self._messages
        while not messages:
            if self._lost.done():
                raise self.protocol.close_exc
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = messages.popleft()
        if self._reading_paused and len(messages) <= QUEUE_LOW and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return message

    async def send(self, message: str | bytes) -> None:
        """Send one text (str) or binary message; ConnectionClosed once the link is
        closing or closed. Waits only while the socket's write buffer is full."""
        protocol = self.protocol
        if protocol.state is not State.OPEN:
            await asyncio.shield(self._lost)  # closing: the reason is known once closed
            raise protocol.close_exc
        if isinstance(message, str):
            protocol.send_text(message.encode())
        else:
            protocol.send_binary(message)
        self._write_out()
        if self._writing_paused:
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                self._drain_waiters.remove(waiter)

    async def close(self) -> None:
        """Close the link (code 1000) and wait until it is closed: the CSMS answers the
        close frame and ends the TCP connection, or after ``close_timeout`` it is cut."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close()
            self._write_out()
            self._arm_abort()
        elif self.transport is not None and not self._lost.done():
            self._arm_abort()
        await asyncio.shield(self._lost)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        self._write_out()  # pongs, the answer to a close frame
        if protocol.close_expected():
            self._arm_abort()
        for event in events:
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Response) and not self._opened.done():
                if protocol.handshake_exc is not None:
                    self._opened.set_exception(protocol.handshake_exc)
                else:
                    self._opened.set_result(None)

    def eof_received(self) -> None:
        # falsy: the transport closes itself (the closing handshake needs no more writes)
        self.protocol.receive_eof()
        self._handshake_ended(self.protocol.events_received())
        self._write_out()

    def connection_lost(self, exc: Exception | None) -> None:
        protocol = self.protocol
        protocol.receive_eof()  # idempotent: the state is CLOSED from here on
        self._handshake_ended(protocol.events_received())
        if not self._opened.done():
            failure = protocol.handshake_exc or exc or InvalidMessage(
                "did not receive a valid HTTP response")
            self._opened.set_exception(failure)
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        self._lost.set_result(None)
        self._wake()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- inside

    def _handshake_ended(self, events: list[Any]) -> None:
        """A response that ended with the stream (no Content-Length) settles the
        handshake; nothing else can arrive at EOF."""
        for event in events:
            if isinstance(event, Response) and not self._opened.done():
                exc = self.protocol.handshake_exc
                if exc is not None:
                    self._opened.set_exception(exc)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._deliver(bytes(frame.data), opcode is Opcode.TEXT)
            else:
                self._fragments = [bytes(frame.data)]
                self._fragmented_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data = b"".join(self._fragments)
                self._fragments = []
                self._deliver(data, self._fragmented_text)
        # ping, pong and close are the protocol's: answered by _write_out

    def _deliver(self, data: bytes, text: bool) -> None:
        """Queue a whole message for :meth:`recv`; a text message that is not UTF-8 fails
        the link with 1007, as websockets' own client does."""
        message: str | bytes = data
        if text:
            try:
                message = data.decode()
            except UnicodeDecodeError as exc:
                self.protocol.fail(CloseCode.INVALID_DATA,
                                   f"{exc.reason} at position {exc.start}")
                self._write_out()
                self._arm_abort()
                return
        self._messages.append(message)
        if (len(self._messages) >= QUEUE_HIGH and not self._reading_paused
                and self.transport is not None):
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _write_out(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()  # the protocol's end of stream
            else:
                transport.close()

    def _arm_abort(self) -> None:
        """The closing handshake is under way: cut the connection if the CSMS has not
        ended it within ``close_timeout``."""
        if self._abort_timer is None and self.transport is not None:
            self._abort_timer = self.loop.call_later(self.close_timeout,
                                                     self.transport.abort)


async def connect(uri: str, *, subprotocols: Sequence[Subprotocol] | None = None,
                  additional_headers: Mapping[str, str] | None = None,
                  open_timeout: float = 10.0, close_timeout: float = 2.0,
                  ssl: ssl_mod.SSLContext | None = None) -> SimWebSocket:
    """Open a websocket to ``uri`` (``ws://`` or ``wss://``, with ``ssl`` or the system's
    default context) and complete the handshake within ``open_timeout`` seconds.

    Offers ``subprotocols`` and no extension (no compression), sends
    ``additional_headers`` (basic auth). Raises what websockets' own client raises:
    ``InvalidURI``, ``InvalidStatus`` when the CSMS refuses the handshake,
    ``InvalidHandshake`` for a bad answer, ``OSError``, ``TimeoutError``.
    """
    wsuri = parse_uri(uri)
    protocol = ClientProtocol(wsuri, subprotocols=subprotocols, max_size=MAX_SIZE)
    loop = asyncio.get_running_loop()
    options: dict[str, Any] = {}
    if wsuri.secure:
        options["ssl"] = ssl or ssl_mod.create_default_context()
        options["server_hostname"] = wsuri.host
    ws: SimWebSocket | None = None
    try:
        async with asyncio.timeout(open_timeout):
            _, ws = await loop.create_connection(
                lambda: SimWebSocket(protocol, close_timeout), wsuri.host, wsuri.port,
                **options)
            request = protocol.connect()
            request.headers["User-Agent"] = USER_AGENT
            if additional_headers:
                request.headers.update(additional_headers)
            protocol.send_request(request)
            ws._write_out()
            await ws._opened
    except BaseException:
        if ws is not None and ws.transport is not None:
            ws.transport.abort()
            if ws._opened.done() and not ws._opened.cancelled():
                ws._opened.exception()  # retrieved: raised here, or a timeout's cause
        raise
    return ws


__all__ = ["ConnectionClosed", "SimWebSocket", "connect"]
