"""The simulator's own OCPP-J RPC layer, frame by frame against a raw-frame CSMS."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raw_csms import Connection, RawCSMS

from gridshare.sim import SimCharger

BOTH = pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
Factory = Callable[..., SimCharger]


async def online(
    raw: RawCSMS, make_charger: Factory, protocol: str, **kw: Any
) -> tuple[SimCharger, Connection]:
    ch = make_charger("CP-RAW", url=raw.url, protocol=protocol, **kw)
    await ch.start(physics=False)
    conn = await raw.connected()
    assert await ch.wait_connected(5)
    return ch, conn


def tx_default(protocol: str, limit: float, **profile: Any) -> dict[str, Any]:
    """A valid SetChargingProfile request (TxDefaultProfile on the whole charger)."""
    sched = {
        "chargingRateUnit": "A",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
    }
    if protocol == "ocpp1.6":
        return {
            "connectorId": 0,
            "csChargingProfiles": {
                "chargingProfileId": 1,
                "stackLevel": 0,
                "chargingProfilePurpose": "TxDefaultProfile",
                "chargingProfileKind": "Relative",
                "chargingSchedule": sched,
                **profile,
            },
        }
    return {
        "evseId": 0,
        "chargingProfile": {
            "id": 1,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": [{"id": 1, **sched}],
            **profile,
        },
    }


@BOTH
async def test_unknown_action_is_not_implemented_and_unhandled_one_not_supported(
    protocol: str, raw: RawCSMS, make_charger: Factory
) -> None:
    _, conn = await online(raw, make_charger, protocol)
    uid = await raw.call(conn, "FlyToTheMoon", {})
    assert (await raw.answer(conn, uid))[:3] == [4, uid, "NotImplemented"]
    unlock = {"connectorId": 1} if protocol == "ocpp1.6" else {"evseId": 1, "connectorId": 1}
    uid = await raw.call(conn, "UnlockConnector", unlock)
    assert (await raw.answer(conn, uid))[:3] == [4, uid, "NotSupported"]
    uid = await raw.call(conn, "SetChargingProfile", tx_default(protocol, 10))
    assert await raw.answer(conn, uid) == [3, uid, {"status": "Accepted"}]


@BOTH
async def test_requests_that_break_the_schema_get_the_matching_error_and_change_nothing(
    protocol: str, raw: RawCSMS, make_charger: Factory
) -> None:
    ch, conn = await online(raw, make_charger, protocol)
    v16 = protocol == "ocpp1.6"
    connector_key = "connectorId" if v16 else "evseId"
    wrong_type = {**tx_default(protocol, 10), connector_key: "zero"}
    incomplete = {connector_key: 0}
    bad_enum = tx_default(protocol, 10, chargingProfilePurpose="WhateverProfile")
    extra = {**tx_default(protocol, 10), "surprise": 1}
    cases = [
        (wrong_type, "TypeConstraintViolation"),
        (incomplete, "ProtocolError"),
        (bad_enum, "PropertyConstraintViolation"),
        (extra, "FormationViolation" if v16 else "FormatViolation"),
    ]
    for payload, code in cases:
        uid = await raw.call(conn, "SetChargingProfile", payload)
        assert (await raw.answer(conn, uid))[:3] == [4, uid, code], payload
    await raw.send(conn, [2, "not-an-object", "SetChargingProfile", [1, 2]])
    answer = await raw.answer(conn, "not-an-object")
    assert answer[:3] == [4, "not-an-object", "FormationViolation" if v16 else "FormatViolation"]
    assert ch.profiles == ()
    assert ch.connected


@BOTH
async def test_one_call_in_flight_with_unique_ids(
    protocol: str, raw: RawCSMS, make_charger: Factory
) -> None:
    raw.hold = {"StatusNotification"}
    ch, conn = await online(raw, make_charger, protocol)
    first = await raw.wait(lambda: conn.calls("StatusNotification"))
    ch.trigger("Heartbeat", None)
    ch.trigger("Heartbeat", None)
    await asyncio.sleep(0.3)
    assert conn.calls("Heartbeat") == []  # the unanswered status blocks everything after it
    raw.hold = set()
    await raw.send(conn, [3, first[0][1], {}])
    await raw.wait(lambda: len(conn.calls("Heartbeat")) == 2)
    ids = [f[1] for f in conn.calls()]
    assert len(ids) == len(set(ids))
    # every CALL of the charger was answered before its next CALL went out
    order = [(way, f[0], f[1]) for way, f in conn.log]
    calls = [i for i, (way, kind, _) in enumerate(order) if way == "in" and kind == 2]
    for this, following in itertools.pairwise(calls):
        answered_at = order.index(("out", 3, order[this][2]))
        assert this < answered_at < following


async def test_no_answer_in_time_drops_the_link_and_reconnects(
    raw: RawCSMS, make_charger: Factory
) -> None:
    ch, conn = await online(raw, make_charger, "ocpp1.6", response_timeout_s=0.3)
    raw.hold = {"Heartbeat"}
    ch.trigger("Heartbeat", None)
    await asyncio.wait_for(conn.closed.wait(), 3)
    raw.hold = set()
    await raw.connected(2)
    assert any("no answer to heartbeat" in what for _, what in ch.events)
    assert await ch.wait_connected(5)


@BOTH
async def test_call_errors_and_invalid_results_are_logged_and_the_link_goes_on(
    protocol: str, raw: RawCSMS, make_charger: Factory
) -> None:
    ch, conn = await online(raw, make_charger, protocol)
    raw.refuse = {"Heartbeat": "InternalError"}
    ch.trigger("Heartbeat", None)
    await raw.wait(lambda: any("heartbeat c0: InternalError" in w for _, w in ch.events))
    raw.refuse = {}
    raw.results = {"Heartbeat": {"currentTime": 5}}  # a number where a date-time belongs
    ch.trigger("Heartbeat", None)
    await raw.wait(lambda: any("heartbeat c0: TypeConstraintViolation" in w for _, w in ch.events))
    raw.results = {}
    ch.trigger("Heartbeat", None)
    await raw.wait(lambda: len(conn.calls("Heartbeat")) == 3)
    assert ch.connected and len(raw.connections) == 1


async def test_a_frame_of_our_own_that_breaks_the_schema_is_never_sent_and_is_reported(
    raw: RawCSMS, make_charger: Factory
) -> None:
    ch = make_charger("CP-BUG", url=raw.url, vendor="a vendor name far too long for 1.6")
    await ch.start(physics=False)
    await raw.wait(lambda: any("failed: SchemaViolation" in what for _, what in ch.events))
    assert not ch.connected
    assert all(conn.calls() == [] for conn in raw.connections)


async def test_round_trips_are_reported_per_answered_request(
    raw: RawCSMS, make_charger: Factory
) -> None:
    ch = make_charger("CP-RTT", url=raw.url)
    seen: list[tuple[str, float]] = []
    ch.on_round_trip(lambda action, seconds: seen.append((action, seconds)))
    await ch.start(physics=False)
    conn = await raw.connected()
    ch.trigger("Heartbeat", None)
    await raw.wait(lambda: "Heartbeat" in [a for a, _ in seen])
    actions = [a for a, _ in seen]
    assert actions == [f[2] for f in conn.calls()]  # one report per answered CALL, in order
    assert actions[0] == "BootNotification" and all(0 < s < 5 for _, s in seen)


@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1"])
def test_known_actions_are_the_versions_actions_and_every_handler_is_one(version: str) -> None:
    from ocpp.v16.enums import Action as Action16
    from ocpp.v201.enums import Action as Action201

    from gridshare.sim.ocpp16 import Ocpp16Wire
    from gridshare.sim.ocpp201 import Ocpp201Wire
    from gridshare.sim.schema import actions

    enum = Action16 if version == "ocpp1.6" else Action201
    assert actions(version) == {a.value for a in enum}  # type: ignore[arg-type]
    wire = Ocpp16Wire if version == "ocpp1.6" else Ocpp201Wire
    charger = SimCharger("CP", "ws://127.0.0.1:1", protocol=version)
    assert set(wire(charger).handlers()) <= actions(version)  # type: ignore[arg-type]


async def test_charger_offering_no_subprotocol_speaks_its_version_on_a_plain_link(
    make_charger: Factory,
) -> None:
    plain = await RawCSMS().start(subprotocols=False)
    try:
        ch = make_charger("CP-PLAIN", url=plain.url, offer_subprotocol=False)
        await ch.start(physics=False)
        conn = await plain.connected()
        assert conn.ws.request is not None
        assert "Sec-WebSocket-Protocol" not in conn.ws.request.headers
        assert await ch.wait_connected(5)
        assert "chargePointVendor" in conn.calls("BootNotification")[0][3]  # OCPP 1.6
    finally:
        await plain.stop()


async def test_charger_offering_its_subprotocol_refuses_a_link_that_negotiated_none(
    make_charger: Factory,
) -> None:
    plain = await RawCSMS().start(subprotocols=False)
    try:
        ch = make_charger("CP-STRICT", url=plain.url, auto_reconnect=False)
        await ch.start(physics=False)
        await plain.wait(lambda: any("subprotocol" in what for _, what in ch.events))
        assert not ch.connected
        assert all(conn.calls() == [] for conn in plain.connections)
    finally:
        await plain.stop()


class FakeSocket:
    """Stands in for the websocket: yields ``incoming`` frames, keeps what is sent."""

    def __init__(self, incoming: list[str]) -> None:
        self.incoming = incoming
        self.sent: list[Any] = []

    async def _frames(self) -> AsyncIterator[str]:
        for text in self.incoming:
            yield text

    def __aiter__(self) -> AsyncIterator[str]:
        return self._frames()

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self) -> None:
        return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
actions = st.sampled_from(
    ["SetChargingProfile", "GetConfiguration", "Reset", "UnlockConnector", "NoSuchAction"]
)
calls = st.tuples(st.just(2), st.text(min_size=1, max_size=12), actions, json_values).map(list)
frames = st.one_of(calls, st.lists(json_values, max_size=5), json_values)


@settings(deadline=None)
@given(incoming=st.lists(frames, max_size=8), version=st.sampled_from(["ocpp1.6", "ocpp2.0.1"]))
def test_any_frames_from_the_csms_get_one_answer_per_call_and_never_break_the_reader(
    incoming: list[Any], version: str
) -> None:
    from gridshare.sim.ocpp16 import Ocpp16Wire
    from gridshare.sim.ocpp201 import Ocpp201Wire
    from gridshare.sim.rpc import RpcConnection
    from gridshare.sim.schema import actions as known

    charger = SimCharger("CP", "ws://127.0.0.1:1", protocol=version)
    wire = Ocpp16Wire(charger) if version == "ocpp1.6" else Ocpp201Wire(charger)
    sock = FakeSocket([json.dumps(f) for f in incoming])
    rpc = RpcConnection(
        sock,  # type: ignore[arg-type]
        wire.version,
        wire.handlers(),
        known_actions=known(wire.version),
        response_timeout_s=1.0,
        answered=lambda action: None,  # no reboot task outside a running session
    )
    asyncio.run(rpc.serve())
    # every frame with an id that is not an answer gets exactly one answer, in order: a
    # CALL its result or error, an unknown message type an error
    answerable = [
        f
        for f in incoming
        if isinstance(f, list) and len(f) >= 3 and isinstance(f[1], str) and f[0] not in (3, 4)
    ]
    assert [answer[1] for answer in sock.sent] == [f[1] for f in answerable]
    for frame, answer in zip(answerable, sock.sent, strict=True):
        if frame[0] != 2:
            assert answer[:3] == [
                4,
                frame[1],
                "FormationViolation" if version == "ocpp1.6" else "MessageTypeNotSupported",
            ]
            continue
        assert answer[0] in (3, 4)
        if len(frame) == 4 and isinstance(frame[3], dict):
            if frame[2] == "NoSuchAction":
                assert answer[2] == "NotImplemented"
            elif frame[2] == "UnlockConnector":
                assert answer[2] == "NotSupported"
