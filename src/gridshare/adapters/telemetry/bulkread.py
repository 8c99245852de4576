"""Read many MQTT packets per wake-up of the event loop, and acknowledge a batch in one write.

Why: paho reads one packet per ``loop_read`` (aiomqtt calls it once each time the socket
is readable) with three or four ``recv`` calls of a few bytes each (type, length, rest),
and sends every PUBACK as a packet of its own. At 10,000 readings/s that per-packet work
was most of the ingest process's event loop (profiled with py-spy on
``benchmarks/bench_ingest.py mqtt``). Here, on one paho client of aiomqtt:

- ``recv`` is buffered: one ``recv`` of up to 64 KiB from the socket, then paho's small
  reads are served from the buffer (same contract: at most ``n`` bytes, ``BlockingIOError``
  when nothing is there, ``b""`` at the end of the stream);
- ``loop_read`` handles packets until the socket has nothing more, at most
  ``MAX_PACKETS`` per call; then it schedules itself again (``call_soon``), because bytes
  already in the buffer no longer make the socket readable;
- a PUBLISH of QoS 0 or 1 that lies whole in the buffer is parsed here and handed to
  ``deliver(topic, payload, mid, qos)`` (paho would build an MQTTMessage, log it at
  debug level, match it against its callback filters: ~3x the work). With manual
  acknowledgement paho keeps no state for such a packet, so nothing is skipped. Every other
  packet (CONNACK, SUBACK, PINGRESP, QoS 2, one split across reads, a malformed one, any
  MQTT 5 packet) goes through paho as before;
- :func:`queue_acks` puts the PUBACKs (PUBCOMPs for QoS 2) of a batch, in arrival order,
  into paho's outgoing queue as one write.

This reaches into paho's private parts (``_sock_recv``, ``_packet_read``, ``_in_packet``,
``_loop_rc_handle``, ``_packet_queue`` ...). :func:`install` checks they are there and
otherwise leaves the client as it is (slower, same behaviour); the telemetry tests run
through a real Mosquitto with it installed.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import MessageType, MQTTErrorCode

MAX_PACKETS: Final = 500
"""Packets handled per call before the event loop gets its turn (the commit task runs on
the same loop)."""
RECV_BYTES: Final = 65536
_PRIVATE: Final = ("_sock_recv", "_packet_read", "_loop_rc_handle", "_packet_queue", "_sock",
                   "_in_packet", "_msgtime_mutex", "_last_bytes_received", "_protocol")
_ACK_COMMAND: Final = {1: 0x40, 2: 0x70}  # PUBACK, PUBCOMP (MQTT 3.1.1 §3.4, §3.7)
_pack_ack = struct.Struct("!BBH").pack


Deliver = Callable[[str, bytes, int, int], None]
"""``(topic, payload, mid, qos)`` of a PUBLISH received."""


class BulkReader:
    """The buffered ``recv`` and the draining ``loop_read`` of one paho client."""

    def __init__(self, client: paho.Client, loop: asyncio.AbstractEventLoop,
                 on_error: Callable[[BaseException], None],
                 deliver: Deliver | None = None) -> None:
        self._client = client
        self._loop = loop
        self._on_error = on_error
        self._deliver = deliver if client._protocol != paho.MQTTv5 else None
        self._recv = client._sock_recv  # paho's: turns SSL want-read into BlockingIOError
        self._sock: object = None
        self._data = b""
        self._pos = 0
        self._resume_pending = False

    def recv(self, size: int) -> bytes:
        sock = self._client._sock
        if sock is not self._sock:  # a new socket: nothing buffered belongs to it
            self._sock, self._data, self._pos = sock, b"", 0
        if self._pos >= len(self._data):
            data = self._recv(RECV_BYTES)  # raises BlockingIOError when nothing is there
            if not data:
                return data  # end of stream
            self._data, self._pos = data, 0
        end = self._pos + size
        chunk = self._data[self._pos:end]
        self._pos += len(chunk)
        return chunk

    def buffered(self) -> int:
        """Bytes received from the socket and not yet handed to paho."""
        return len(self._data) - self._pos

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho's ``loop_read``, but until the socket is drained (``max_packets`` is
        ignored, as paho does)."""
        client = self._client
        fast = self._deliver is not None
        parsed = 0
        try:
            for _ in range(MAX_PACKETS):
                if client._sock is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
                if fast and client._in_packet["command"] == 0 and self._publish():
                    parsed += 1
                    continue
                rc = client._packet_read()
                if rc > 0:
                    return client._loop_rc_handle(rc)
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
        finally:
            if parsed:  # what paho's _packet_read records, for its keepalive
                with client._msgtime_mutex:
                    client._last_bytes_received = time.monotonic()
        if not self._resume_pending:
            self._resume_pending = True
            self._loop.call_soon(self._resume)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _publish(self) -> bool:
        """Deliver the PUBLISH (QoS 0 or 1, MQTT 3.1.1 §3.3) at the start of the buffer if
        it lies there whole; False (nothing consumed) for anything else."""
        data, pos = self._data, self._pos
        end_of_data = len(data)
        if pos >= end_of_data:
            return False
        first = data[pos]
        if first & 0xF0 != 0x30 or first & 0x06 > 0x02:  # not PUBLISH, or QoS 2 (or 3)
            return False
        i, length, shift = pos + 1, 0, 0
        while True:  # remaining length: 1 to 4 bytes, 7 bits each, low first
            if i >= end_of_data or shift > 21:
                return False
            byte = data[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        end = i + length
        if end > end_of_data or length < 2:
            return False
        topic_end = i + 2 + (data[i] << 8 | data[i + 1])
        qos = (first >> 1) & 1
        start = topic_end + 2 * qos
        if topic_end == i + 2 or start > end:  # an empty topic, or too short: paho's error
            return False
        try:
            topic = data[i + 2:topic_end].decode("utf-8")
        except UnicodeDecodeError:
            return False
        mid = data[topic_end] << 8 | data[topic_end + 1] if qos else 0
        self._pos = end
        self._deliver(topic, data[start:end], mid, qos)  # type: ignore[misc]
        return True

    def _resume(self) -> None:
        self._resume_pending = False
        try:
            self.loop_read()
        except Exception as exc:
            self._on_error(exc)


def install(client: paho.Client, loop: asyncio.AbstractEventLoop,
            on_error: Callable[[BaseException], None],
            deliver: Deliver | None = None) -> BulkReader | None:
    """Make ``client`` (before it connects) read in bulk, PUBLISH packets to ``deliver``
    when given (paho's ``on_message`` still gets those paho parses; set both, and manual
    acknowledgement); None if paho's internals are not the ones this was written for (the
    client is then left as it is)."""
    if not all(hasattr(client, name) for name in _PRIVATE):
        return None
    reader = BulkReader(client, loop, on_error, deliver)
    patched: Any = client  # instance attributes shadow paho's methods for this client only
    patched._sock_recv = reader.recv
    patched.loop_read = reader.loop_read
    return reader


def queue_acks(client: paho.Client, acks: Sequence[tuple[int, int]]) -> int:
    """Acknowledge ``(mid, qos)`` pairs, in this order, as one write (QoS 0 ones need
    nothing); returns how many were sent."""
    owed = [(mid, qos) for mid, qos in acks if qos > 0]
    if not owed:
        return 0
    if not hasattr(client, "_packet_queue"):
        for mid, qos in owed:
            client.ack(mid, qos)
        return len(owed)
    packet = b"".join([_pack_ack(_ACK_COMMAND[qos], 2, mid) for mid, qos in owed])
    client._packet_queue(MessageType.PUBACK, packet, 0, 0)
    return len(owed)
