"""The bulk reader on a real paho client over a socket pair, with its own PUBLISH parser
and without it (paho parses every packet): every packet of a burst delivered once and in
order (also past MAX_PACKETS, when bytes are left in the buffer and the socket no longer
says readable), packets split across writes at any byte (hypothesis), the end of the
stream; the batch's acknowledgements wire-exact, in order, as one write; the inbox's batch
cap."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from waits import eventually

from gridshare.adapters.telemetry import bulkread
from gridshare.adapters.telemetry.link import _Inbox


def publish(topic: str, mid: int, payload: bytes, qos: int = 1, flags: int = 0) -> bytes:
    """One MQTT 3.1.1 PUBLISH packet; ``flags``: DUP 0x08, RETAIN 0x01."""
    raw = topic.encode()
    body = len(raw).to_bytes(2, "big") + raw + (mid.to_bytes(2, "big") if qos else b"") \
        + payload
    length, size = bytearray(), len(body)
    while True:
        size, byte = divmod(size, 128)
        length.append(byte | (0x80 if size else 0))
        if not size:
            break
    return bytes([0x30 | qos << 1 | flags]) + bytes(length) + body


PINGRESP = b"\xd0\x00"


class Rig:
    def __init__(self, client: paho.Client, ours: socket.socket, theirs: socket.socket,
                 loop: asyncio.AbstractEventLoop, fast: bool) -> None:
        self.client = client
        self.theirs = theirs
        self.got: list[tuple[str, bytes, int, int]] = []
        self.errors: list[BaseException] = []
        self.disconnects = 0
        client.on_message = lambda _c, _u, m: self.got.append(
            (m.topic, m.payload, m.mid, m.qos))
        client.on_disconnect = lambda *_: setattr(self, "disconnects", self.disconnects + 1)
        client._sock = ours  # as after paho's connect (non-blocking)
        reader = bulkread.install(
            client, loop, self.errors.append,
            (lambda *got: self.got.append(got)) if fast else None)  # type: ignore[arg-type]
        assert reader is not None
        self.reader = reader


@contextlib.asynccontextmanager
async def rigged(fast: bool) -> AsyncIterator[Rig]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="t")
    client.manual_ack_set(True)
    try:
        yield Rig(client, ours, theirs, asyncio.get_running_loop(), fast)
    finally:
        ours.close()
        theirs.close()


@pytest.fixture(params=[True, False], ids=["own-parser", "paho-parser"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    async with rigged(request.param) as made:
        yield made


async def test_a_burst_beyond_max_packets_is_delivered_once_in_order(rig: Rig) -> None:
    count = bulkread.MAX_PACKETS * 3 + 7
    packets = [publish(f"a/m-{k}", k % 65535 + 1, b'{"k": %d}' % k) for k in range(count)]
    rig.theirs.sendall(b"".join(packets))  # ~40 KB: one recv takes it all
    rig.client.loop_read()  # what aiomqtt calls when the socket is readable
    assert len(rig.got) == bulkread.MAX_PACKETS  # then the loop's other work gets a turn
    # The rest is in the buffer, not the socket: the reader schedules itself again.
    await eventually(lambda: len(rig.got) == count, 5)
    assert rig.got == [(f"a/m-{k}", b'{"k": %d}' % k, k % 65535 + 1, 1)
                       for k in range(count)]
    assert rig.reader.buffered() == 0 and rig.errors == []


async def test_a_packet_split_across_reads_waits_for_its_rest(rig: Rig) -> None:
    packet = publish("a/m-1", 7, b"x" * 300)
    rig.theirs.sendall(packet[:1])
    rig.client.loop_read()
    rig.theirs.sendall(packet[1:150])
    rig.client.loop_read()
    assert rig.got == []
    rig.theirs.sendall(packet[150:] + publish("a/m-2", 8, b"y", qos=0))
    rig.client.loop_read()
    assert rig.got == [("a/m-1", b"x" * 300, 7, 1), ("a/m-2", b"y", 0, 0)]


packets = st.lists(st.one_of(
    st.tuples(st.sampled_from(["a/m-1", "a/ü", "a/" + "t" * 300]), st.integers(1, 65535),
              st.binary(max_size=20_000), st.sampled_from([0, 1]),
              st.sampled_from([0, 0x08, 0x01])),
    st.just(PINGRESP)), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(packets, st.lists(st.integers(1, 40_000), max_size=8), st.booleans())
def test_any_split_of_a_stream_gives_its_messages_once_in_order(
        items: list[tuple[str, int, bytes, int, int] | bytes], cuts: list[int],
        fast: bool) -> None:
    stream = b"".join(item if isinstance(item, bytes) else publish(
        item[0], item[1], item[2], item[3], item[4]) for item in items)
    expected = [(i[0], i[2], i[1] if i[3] else 0, i[3]) for i in items
                if not isinstance(i, bytes)]

    async def feed() -> list[tuple[str, bytes, int, int]]:
        async with rigged(fast) as rig:
            at = 0
            for cut in [*sorted({c % len(stream) for c in cuts}), len(stream)]:
                rig.theirs.sendall(stream[at:cut])
                at = cut
                rig.client.loop_read()
                await asyncio.sleep(0)  # a resume the reader scheduled
            await eventually(lambda: len(rig.got) >= len(expected), 5, 0.001)
            assert rig.errors == [] and rig.reader.buffered() == 0
            return rig.got

    assert asyncio.run(feed()) == expected


async def test_end_of_stream_ends_the_connection(rig: Rig) -> None:
    rig.theirs.sendall(publish("a/m-1", 1, b"{}"))
    rig.theirs.close()
    rc = rig.client.loop_read()
    assert rig.got == [("a/m-1", b"{}", 1, 1)]
    assert rc == paho.MQTTErrorCode.MQTT_ERR_CONN_LOST and rig.disconnects == 1


def test_acks_go_in_arrival_order_as_one_write() -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="t")
    sent = bulkread.queue_acks(client, [(1, 1), (2, 0), (300, 2), (65535, 1)])
    assert sent == 3  # QoS 0 owes nothing
    (packet,) = client._out_packet  # queued: no socket in this test
    # PUBACK 1, PUBCOMP 300 (QoS 2), PUBACK 65535 (MQTT 3.1.1 §3.4, §3.7)
    assert bytes(packet["packet"]) == bytes.fromhex("40020001" "7002012c" "4002ffff")
    assert bulkread.queue_acks(client, [(3, 0)]) == 0 and len(client._out_packet) == 1


def message(mid: int, qos: int = 1) -> paho.MQTTMessage:
    m = paho.MQTTMessage(mid=mid, topic=f"a/m-{mid}".encode())
    m.payload, m.qos = b"{}", qos
    return m


async def test_the_inbox_hands_over_at_most_batch_rows_in_order() -> None:
    inbox = _Inbox(batch_rows=3)
    for mid in range(1, 8):
        inbox.on_message(None, None, message(mid, qos=0 if mid == 2 else 1))  # type: ignore[arg-type]
    assert inbox.full.is_set() and inbox.received == 7
    inbox.full.clear()
    messages, acks = inbox.take()
    assert [t for t, _ in messages] == ["a/m-1", "a/m-2", "a/m-3"]
    assert acks == [(1, 1), (2, 0), (3, 1)]
    assert inbox.full.is_set()  # another whole batch is waiting
    inbox.full.clear()
    assert [mid for mid, _ in inbox.take()[1]] == [4, 5, 6]
    assert not inbox.full.is_set()
    assert inbox.take() == ([("a/m-7", b"{}")], [(7, 1)])
    assert inbox.take() == ([], [])
