"""Thousands of bad frames into one connection while another charger keeps working.

A seeded generator (reproducible, no flakiness) draws from every kind of bad input; each
frame is followed by a Heartbeat "barrier" so we know exactly which replies (if any) the
bad frame caused and that the connection is still alive. At the end the rejection
counters must match what was sent, exactly.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from csms_helpers import CsmsFactory, Msgs, charger, iso, raw_socket
from websockets.exceptions import ConnectionClosedError

from gridshare.drivers import CommandResult
from gridshare.events import MeterReading

FRAMES_PER_VERSION = 2500
MAX_BYTES = 4096

CODES = {
    "ocpp1.6": {"rpc": "FormationViolation", "format": "FormationViolation",
                "required": "ProtocolError", "message_type": "FormationViolation"},
    "ocpp2.0.1": {"rpc": "RpcFrameworkError", "format": "FormatViolation",
                  "required": "OccurrenceConstraintViolation",
                  "message_type": "MessageTypeNotSupported"},
}


@dataclass
class Case:
    name: str
    frame: str | bytes
    reply: tuple[str, str] | None
    """(message id, CallError code or "result"), or None when nothing may come back."""
    rejects: tuple[str, ...] = ()
    good_samples: int = 0


class Fuzzer:
    def __init__(self, version: str, seed: int) -> None:
        self.v = version
        self.v16 = version == "ocpp1.6"
        self.rng = random.Random(seed)
        self.codes = CODES[version]
        self.base = datetime.now(UTC) - timedelta(hours=2)
        self.sample_no = 0
        self.unreadable = ("-1", self.codes["rpc"]) if not self.v16 else None

    def _next_ts(self) -> str:
        self.sample_no += 1
        return iso(self.base + timedelta(seconds=self.sample_no))

    def _sv(self, measurand: str, value: Any, unit: str, phase: str | None = None) -> dict:
        if self.v16:
            sv: dict[str, Any] = {"value": str(value), "measurand": measurand, "unit": unit}
        else:
            sv = {"value": value, "measurand": measurand, "unitOfMeasure": {"unit": unit}}
        if phase:
            sv["phase"] = phase
        return sv

    def _meter(self, uid: str, elements: list[tuple[str, list[dict]]]) -> str:
        mv = [{"timestamp": ts, "sampledValue": svs} for ts, svs in elements]
        payload = ({"connectorId": 1, "meterValue": mv} if self.v16
                   else {"evseId": 1, "meterValue": mv})
        return json.dumps([2, uid, "MeterValues", payload])  # allow_nan: NaN literal on purpose

    # --- the cases --------------------------------------------------------------------

    def random_bytes(self, uid: str) -> Case:
        data = self.rng.randbytes(self.rng.randint(1, 300))
        return Case("bytes", data, self.unreadable, ("frame_binary",))

    def garbage_text(self, uid: str) -> Case:
        text = "".join(self.rng.choice("abcxyz{}:,0123 ") for _ in range(self.rng.randint(1, 80)))
        return Case("garbage", "x" + text, self.unreadable, ("frame_invalid_json",))

    def truncated(self, uid: str) -> Case:
        full = json.dumps([2, uid, "StatusNotification", {"connectorId": 1,
                                                          "errorCode": "NoError",
                                                          "status": "Available"}])
        cut = self.rng.randint(len(f'[2, "{uid}"'), len(full) - 1)
        return Case("truncated", full[:cut], (uid, self.codes["rpc"]), ("frame_invalid_json",))

    def wrong_type(self, uid: str) -> Case:
        payload = ({"connectorId": "one", "errorCode": "NoError", "status": "Available"}
                   if self.v16 else {"timestamp": self._next_ts(), "connectorStatus": "Available",
                                     "evseId": "one", "connectorId": 1})
        return Case("wrong_type", json.dumps([2, uid, "StatusNotification", payload]),
                    (uid, "TypeConstraintViolation"), ("schema_type",))

    def missing_required(self, uid: str) -> Case:
        return Case("missing", json.dumps([2, uid, "BootNotification", {}]),
                    (uid, self.codes["required"]), ("schema_required",))

    def extra_property(self, uid: str) -> Case:
        return Case("extra", json.dumps([2, uid, "Heartbeat", {"surprise": 1}]),
                    (uid, self.codes["format"]), ("schema_format",))

    def bad_enum(self, uid: str) -> Case:
        payload = ({"connectorId": 1, "errorCode": "NoError", "status": "Dancing"} if self.v16
                   else {"timestamp": self._next_ts(), "connectorStatus": "Dancing",
                         "evseId": 1, "connectorId": 1})
        return Case("enum", json.dumps([2, uid, "StatusNotification", payload]),
                    (uid, "PropertyConstraintViolation"), ("schema_property",))

    def unknown_action(self, uid: str) -> Case:
        action = "Make" + "".join(self.rng.choice("ABCDEFGH") for _ in range(6))
        return Case("unknown", json.dumps([2, uid, action, {}]), (uid, "NotImplemented"),
                    ("call_NotImplemented",))

    def unhandled_action(self, uid: str) -> Case:
        return Case("unhandled", json.dumps([2, uid, "Reset", {"type": "Hard"}]),
                    (uid, "NotSupported"), ("call_NotSupported",))

    def huge(self, uid: str) -> Case:
        size = self.rng.randint(MAX_BYTES, 3 * MAX_BYTES)
        frame = json.dumps([2, uid, "DataTransfer", {"vendorId": "x", "data": "y" * size}])
        return Case("huge", frame, (uid, self.codes["format"]), ("frame_oversized",))

    def deep(self, uid: str) -> Case:
        depth = self.rng.randint(1100, 1900)
        return Case("deep", "[" * depth + "]" * depth, self.unreadable, ("frame_invalid_json",))

    def not_array(self, uid: str) -> Case:
        frame = self.rng.choice(['{"a":1}', "42", '"text"', "null", "[]"])
        return Case("not_array", frame, self.unreadable, ("frame_not_array",))

    def bad_structure(self, uid: str) -> Case:
        frame = self.rng.choice([json.dumps([2, uid, 5, {}]), json.dumps([2, uid, "Heartbeat"]),
                                 json.dumps([2, uid, "Heartbeat", {}, 1])])
        return Case("structure", frame, (uid, self.codes["rpc"]), ("frame_bad_call",))

    def payload_not_object(self, uid: str) -> Case:
        return Case("payload", json.dumps([2, uid, "Heartbeat", [1]]),
                    (uid, self.codes["format"]), ("frame_bad_payload",))

    def wrong_message_type(self, uid: str) -> Case:
        return Case("type_id", json.dumps([self.rng.choice([0, 1, 5, 7, 99]), uid, "x", {}]),
                    (uid, self.codes["message_type"]), ("frame_unknown_type_id",))

    def unsolicited(self, uid: str) -> Case:
        frame = self.rng.choice([json.dumps([3, uid, {"status": "Accepted"}]),
                                 json.dumps([4, uid, "GenericError", "", {}])])
        return Case("unsolicited", frame, None, ("unsolicited_response",))

    def nan_sample(self, uid: str) -> Case:
        bad = self.rng.choice([float("nan"), float("inf"), float("-inf")])
        good = self._sv("Voltage", 230, "V")
        frame = self._meter(uid, [(self._next_ts(), [self._sv("Power.Active.Import", bad, "W"),
                                                      good])])
        return Case("nan", frame, (uid, "result"), ("meter_not_finite",), good_samples=1)

    def future_sample(self, uid: str) -> Case:
        future = iso(datetime.now(UTC) + timedelta(hours=1))
        sv = [self._sv("Energy.Active.Import.Register", 1000, "Wh")]
        frame = self._meter(uid, [(self._next_ts(), sv), (future, sv)])
        return Case("future", frame, (uid, "result"), ("meter_future_timestamp",),
                    good_samples=1)

    def negative_sample(self, uid: str) -> Case:
        sv = [self._sv("Current.Import", -5, "A", "L1"), self._sv("Current.Import", 6, "A", "L2")]
        frame = self._meter(uid, [(self._next_ts(), sv)])
        return Case("negative", frame, (uid, "result"), ("meter_negative",), good_samples=1)

    def duplicate(self, uid: str) -> Case:
        """Repeat the previous barrier Heartbeat, same message id: the cached answer again."""
        index = int(uid[1:])
        if index == 0:
            return Case("first", json.dumps([2, uid, "Heartbeat", {}]), (uid, "result"))
        previous = f"barrier-{index - 1}"
        return Case("duplicate", json.dumps([2, previous, "Heartbeat", {}]),
                    (previous, "result"), ("duplicate_message",))

    def generate(self, index: int) -> Case:
        makers: list[Callable[[str], Case]] = [
            self.random_bytes, self.garbage_text, self.truncated, self.wrong_type,
            self.missing_required, self.extra_property, self.bad_enum, self.unknown_action,
            self.unhandled_action, self.huge, self.deep, self.not_array, self.bad_structure,
            self.payload_not_object, self.wrong_message_type, self.unsolicited,
            self.nan_sample, self.future_sample, self.negative_sample, self.duplicate]
        return self.rng.choice(makers)(f"f{index}")


async def _good_charger(cp: Any, msgs: Msgs, stop: asyncio.Event, sent: list[int]) -> None:
    base = datetime.now(UTC) - timedelta(hours=1)
    n = 0
    while not stop.is_set():
        n += 1
        ts = iso(base + timedelta(seconds=n))
        await cp.call(msgs.meter_values(1, [(ts, [msgs.sampled("Voltage", 231.0, "V")])]))
        sent.append(n)
        await cp.call(msgs.heartbeat())
        await asyncio.sleep(0.002)


async def test_fuzz_frames_rejected_connection_and_neighbours_unharmed(
        make_csms: CsmsFactory, version: str) -> None:
    csms, events = await make_csms(max_message_bytes=MAX_BYTES)
    fuzzer = Fuzzer(version, seed=20240501 if version == "ocpp1.6" else 20240502)
    expected: Counter[str] = Counter()
    good_samples = 0
    seen: Counter[str] = Counter()
    stop = asyncio.Event()
    sent: list[int] = []
    async with charger(csms, "GOOD", version) as good, raw_socket(csms, "FUZZ", version) as ws:
        neighbour = asyncio.create_task(_good_charger(good, Msgs(version), stop, sent))
        setpoints = []
        for i in range(FRAMES_PER_VERSION):
            case = fuzzer.generate(i)
            seen[case.name] += 1
            expected.update(case.rejects)
            good_samples += case.good_samples
            await ws.send(case.frame)
            barrier = f"barrier-{i}"
            await ws.send(json.dumps([2, barrier, "Heartbeat", {}]))
            replies = []
            async with asyncio.timeout(5):
                while (message := json.loads(await ws.recv()))[1] != barrier:
                    replies.append(message)
            assert message[0] == 3, f"barrier after {case.name} answered {message}"
            if case.reply is None:
                assert replies == [], f"{case.name}: unexpected reply {replies}"
            else:
                assert len(replies) == 1, f"{case.name}: replies {replies}"
                (reply,) = replies
                uid, code = case.reply
                assert reply[1] == uid, (case.name, reply)
                if code == "result":
                    assert reply[0] == 3, (case.name, reply)
                else:
                    assert reply[0] == 4 and reply[2] == code, (case.name, case.frame, reply)
                    assert isinstance(reply[3], str) and isinstance(reply[4], dict)
            if i % 100 == 0:
                setpoints.append((await csms.apply_setpoint("GOOD", 1, 6 + i % 10, 60)).result)
        stop.set()
        await neighbour
        assert csms.connected() == frozenset({"GOOD", "FUZZ"})
    assert setpoints == [CommandResult.ACCEPTED] * len(setpoints)
    assert len(seen.keys() - {"first"}) == 20  # every kind of bad input was drawn
    assert len(events.of(MeterReading, "GOOD")) == len(sent) > 0
    assert len(events.of(MeterReading, "FUZZ")) == good_samples > 0
    assert csms.counters.rejected == dict(expected)


async def test_frame_beyond_socket_limit_closes_only_that_connection(
        make_csms: CsmsFactory, version: str) -> None:
    csms, _ = await make_csms(max_message_bytes=1024)
    msgs = Msgs(version)
    async with charger(csms, "GOOD", version) as good, raw_socket(csms, "FLOOD", version) as ws:
        await ws.send(json.dumps([2, "x", "DataTransfer", {"vendorId": "x",
                                                           "data": "y" * 200_000}]))
        try:
            async with asyncio.timeout(5):
                await ws.recv()
        except ConnectionClosedError:
            pass
        assert ws.close_code == 1009
        assert (await good.call(msgs.heartbeat())).current_time
        assert "GOOD" in csms.connected()
