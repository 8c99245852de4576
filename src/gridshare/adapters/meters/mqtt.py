"""One MQTT connection for every mqtt meter of the site, kept up for as long as it runs.

The broker may be down at start-up, restart, or refuse us: the link never raises for any
of that. It reconnects with capped exponential backoff and reports an outage once (when
it begins) and the recovery once, so a broker that is away for an hour writes two log
lines, not thousands.

Retained messages that the broker replays on subscribing are dropped: their age is
unknown (a meter that died yesterday left one), and stamping one with the time of receipt
would make a dead meter look alive. A retained message a device publishes while we are
subscribed reaches us as a live one (the broker clears the flag), so it is read as usual.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiomqtt

from gridshare.config import MqttSpec
from gridshare.tasks import cancel_and_wait, raise_if_cancelled

log = logging.getLogger("gridshare.meters")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where to connect, from ``mqtt://host[:port]`` / ``mqtts://host[:port]``."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or port == -1:
            raise ValueError(f"not an mqtt://host[:port] or mqtts://host[:port] url: {url!r}")
        return cls(parts.hostname, port or (8883 if tls else 1883), tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class SetupError(Exception):
    """A local file the connection needs (password, CA) could not be read."""


def read_password(path: Path) -> str:
    """The password in ``path`` without its trailing newline (files end with one)."""
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise SetupError(f"password_file {path}: {getattr(exc, 'strerror', None) or exc}"
                         ) from None


def tls_context(cafile: Path | None) -> ssl.SSLContext:
    """Certificate and host checks on; the site's CA, or the system's when none is given."""
    try:
        return ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise SetupError(f"cafile {cafile}: {getattr(exc, 'strerror', None) or exc}"
                         ) from None


def valid_filter(topic: str) -> bool:
    """Whether ``topic`` can be subscribed to (``+``/``#`` only where MQTT allows them)."""
    try:
        aiomqtt.Wildcard(topic)
    except (ValueError, TypeError):
        return False
    return True


class Connection(Protocol):
    connected: bool
    connects: int


async def keep_connected(owner: Connection, connect: Callable[[], aiomqtt.Client],
                         prepare: Callable[[aiomqtt.Client], Awaitable[None]],
                         serve: Callable[[aiomqtt.Client], Awaitable[None]], *, label: str,
                         on_outage: Callable[[str], None] | None = None,
                         on_closed: Callable[[], None] | None = None) -> None:
    """Keep one MQTT connection up for as long as the task runs: connect, ``prepare`` it,
    mark ``owner`` connected, ``serve`` until the link ends; then wait (capped exponential
    backoff) and do it again. An outage is logged (and told to ``on_outage``) once, when it
    begins, and its end once; nothing but cancellation stops the loop."""
    backoff = BACKOFF_FIRST
    down = False
    while True:
        try:
            async with connect() as client:
                await prepare(client)
                owner.connected = True
                owner.connects += 1
                backoff = BACKOFF_FIRST
                if down:
                    log.info("%s: connected again", label)
                    down = False
                await serve(client)
            reason = "connection closed"
        except (aiomqtt.MqttError, SetupError) as exc:
            reason = str(exc) or type(exc).__name__
        except (OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # never let the link die: log the bug, keep retrying
            log.exception("%s: unexpected error", label)
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            owner.connected = False
            if on_closed is not None:
                on_closed()
        raise_if_cancelled()  # stopped while connecting or closing: not an outage
        if not down:
            log.warning("%s: %s; retrying with backoff up to %.0f s", label, reason,
                        BACKOFF_MAX)
            down = True
            if on_outage is not None:
                on_outage(reason)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, BACKOFF_MAX)


def make_client(spec: MqttSpec, address: BrokerAddress, *, suffix: str | None = None,
                logger: logging.Logger = log, **options: Any) -> aiomqtt.Client:
    """A fresh client for the site's broker: the password file is re-read (a changed
    password is picked up at the next connect), TLS for ``mqtts://``. Every connection but
    the meters' adds a ``suffix`` to the configured client id: the broker drops one of two
    connections that share one. ``options`` go to ``aiomqtt.Client`` as they are."""
    password = read_password(spec.password_file) if spec.password_file is not None else None
    context = tls_context(spec.cafile) if address.tls else None
    identifier = spec.client_id
    if identifier is not None and suffix:
        identifier = f"{identifier}-{suffix}"
    options.setdefault("identifier", identifier)
    return aiomqtt.Client(
        address.host, address.port, username=spec.username, password=password,
        tls_context=context, timeout=CONNECT_TIMEOUT, keepalive=30,
        logger=logger.getChild("client"), **options)


async def read_while_sending(reader: Coroutine[Any, Any, None], wake: asyncio.Event,
                             send_pending: Callable[[], Awaitable[bool]], *,
                             name: str) -> None:
    """Run ``reader`` (a connection's message loop) while sending what is pending each
    time ``wake`` is set; return or raise when the reader ends (the link closed or broke).
    ``send_pending`` sends what is queued, keeps what it could not send for the next
    connection, and says whether it sent anything (then it is asked again before waiting:
    what was queued meanwhile goes out at once)."""
    task = asyncio.create_task(reader, name=name)
    try:
        while not task.done():
            if await send_pending():
                continue
            wake.clear()
            waiter = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        task.result()
    finally:
        await cancel_and_wait([task], absorb=(aiomqtt.MqttError,))


class MqttLink:
    """Subscribes to ``topics`` and hands every message to ``on_message``; reconnects."""

    def __init__(self, spec: MqttSpec, topics: Iterable[str],
                 on_message: Callable[[str, bytes], None],
                 on_outage: Callable[[str], None]) -> None:
        self._spec = spec
        self._address = BrokerAddress.parse(spec.url)
        self._topics = tuple(dict.fromkeys(topics))
        self._on_message = on_message
        self._on_outage = on_outage
        self.connected = False
        self.connects = 0
        """Successful connections so far (a test waits for a reconnect with it)."""
        self.replayed = 0
        """Retained messages dropped because their age is unknown."""

    @property
    def address(self) -> BrokerAddress:
        return self._address

    def _client(self) -> aiomqtt.Client:
        return make_client(self._spec, self._address)

    async def run(self) -> None:
        """Connect, subscribe, deliver; on any failure wait (capped backoff) and reconnect."""
        await keep_connected(self, self._client, self._subscribe, self._read,
                             label=f"mqtt {self._address}",
                             on_outage=lambda why: self._on_outage(
                                 f"broker {self._address}: {why}"))

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        for topic in self._topics:
            await client.subscribe(topic)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self._deliver(message)

    def _deliver(self, message: aiomqtt.Message) -> None:
        if message.retain:
            self.replayed += 1
            return
        payload = message.payload
        if isinstance(payload, str):
            data = payload.encode("utf-8")
        elif isinstance(payload, bytes | bytearray):
            data = bytes(payload)
        else:  # paho hands over bytes; an int/float/None here would be a library change
            data = b"" if payload is None else str(payload).encode("ascii")
        try:
            self._on_message(message.topic.value, data)
        except Exception:  # a bug in a consumer must not take the broker link down
            log.exception("mqtt %s: handling a message on %s failed",
                          self._address, message.topic.value)
