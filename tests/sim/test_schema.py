"""The simulator's schema checks stay strict where they were made cheaper, and the frames
it writes are byte for byte what ``json.dumps`` of the frame gives."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gridshare.sim import EV
from gridshare.sim.ocpp16 import Ocpp16Wire
from gridshare.sim.ocpp201 import Ocpp201Wire
from gridshare.sim.profiles import parse_time
from gridshare.sim.rpc import RpcConnection
from gridshare.sim.schema import SchemaViolation, checker, validate, validate_serialized
from gridshare.sim.site import SimSite


def test_a_remembered_valid_answer_never_lets_an_invalid_one_through() -> None:
    good = {"status": "Accepted"}
    bad = {"status": "Maybe"}
    for _ in range(3):
        validate_serialized("ocpp1.6", "SetChargingProfile", good, json.dumps(good), response=True)
        with pytest.raises(SchemaViolation) as e:
            validate_serialized(
                "ocpp1.6", "SetChargingProfile", bad, json.dumps(bad), response=True
            )
        assert e.value.rule == "enum"
    # the same text is valid for one schema and not for another
    with pytest.raises(SchemaViolation):
        validate_serialized("ocpp2.0.1", "GetVariables", good, json.dumps(good), response=True)


def test_bound_checker_agrees_with_validate() -> None:
    check = checker("ocpp2.0.1", "SetChargingProfile", False)
    for payload in ({}, {"evseId": "1"}, {"evseId": 1, "chargingProfile": {}}):
        with pytest.raises(SchemaViolation) as bound:
            check(payload)
        with pytest.raises(SchemaViolation) as plain:
            validate("ocpp2.0.1", "SetChargingProfile", payload, response=False)
        assert bound.value.rule == plain.value.rule
        assert str(bound.value) == str(plain.value)


def test_parsed_times_are_the_same_instants() -> None:
    assert parse_time(None) is None
    a = parse_time("2026-11-30T06:45:30Z")
    b = parse_time("2026-11-30T06:45:30Z")
    assert a == b and a is not None and a.utcoffset() is not None
    assert parse_time("2026-11-30T07:45:30+01:00") == a
    naive = parse_time("2026-11-30T06:45:30")
    assert naive == a


class _Wire:
    """Stands in for the websocket: keeps what would be written."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, text: str) -> None:
        self.sent.append(text)


def _tx_profile(protocol: str, tx_id: str, limit: Any) -> dict[str, Any]:
    sched = {
        "startSchedule": "2020-01-01T00:00:00Z",
        "chargingRateUnit": "A",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit, "numberPhases": 3}],
    }
    common = {
        "stackLevel": 1,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Absolute",
        "validTo": "2099-11-30T07:45:30Z",
    }
    if protocol == "ocpp1.6":
        return {
            "connectorId": 1,
            "csChargingProfiles": {
                "chargingProfileId": 7,
                "transactionId": int(tx_id),
                **common,
                "chargingSchedule": sched,
            },
        }
    return {
        "evseId": 1,
        "chargingProfile": {
            "id": 7,
            "transactionId": tx_id,
            **common,
            "chargingSchedule": [{"id": 7, **sched}],
        },
    }


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
def test_answers_are_the_frames_json_dumps_would_write(protocol: str) -> None:
    async def run() -> None:
        site = SimSite.build("ws://unused", 1, protocol=protocol, three_phase_share=1.0)
        (ch,) = site.chargers.values()
        tx = ch.plug_nowait(1, EV(capacity_kwh=60.0, soc=0.2, max_current_a=32.0))
        tx.id = tx.id or "42"
        tx.active = True
        wire = Ocpp16Wire(ch) if protocol == "ocpp1.6" else Ocpp201Wire(ch)
        ws = _Wire()
        rpc = RpcConnection(
            ws,  # type: ignore[arg-type]
            wire.version,
            wire.handlers(),
            known_actions=wire.known_actions,
            response_timeout_s=5,
            name=ch.id,
        )
        answers: list[Any] = []
        for i, (limit, uid) in enumerate(((12.0, 'a\u00e9"1'), (14.0, "2"), ("14", "3"))):
            payload = _tx_profile(protocol, tx.id, limit)
            await rpc._receive(json.dumps([2, uid, "SetChargingProfile", payload]))
            frame = json.loads(ws.sent[i])
            assert ws.sent[i] == json.dumps(frame, separators=(",", ":"))
            answers.append(frame)
        assert [f[:2] for f in answers[:2]] == [[3, 'a\u00e9"1'], [3, "2"]]
        assert answers[0][2]["status"] == "Accepted" == answers[1][2]["status"]
        assert ch.offered_a(1) == 14.0
        # a limit the schema forbids is still refused, not applied
        assert answers[2][0] == 4
        assert ch.offered_a(1) == 14.0

    asyncio.run(run())
