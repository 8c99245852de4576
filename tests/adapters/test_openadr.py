"""The OpenADR 2.0b VEN against a real openleadr VTN on localhost, and its event mapping.

The VTN (``openleadr.OpenADRServer``) registers the VEN, hands it events on its polls,
records the VEN's opt answers and takes its reports. What reaches the DR service is checked
on the real core event book (:class:`FakeDr`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api.test_dr_api import FakeDr
from brokers import free_port
from openleadr import OpenADRServer  # type: ignore[import-untyped]
from waits import eventually

from gridshare.adapters.dr.openadr import OPT_IN, OPT_OUT, EventRefused, OpenAdrVen
from gridshare.clock import SystemClock
from gridshare.config import OpenAdrSpec
from gridshare.core.dr.book import EventState
from gridshare.core.dr.signals import DrPriority, SignalType, signal_from_json

VEN_ID = "ven-plaza-1"
pytestmark = pytest.mark.filterwarnings(
    "ignore::aiohttp.web_exceptions.NotAppKeyWarning")  # openleadr's VTN, not ours




@dataclass
class Vtn:
    """A real openleadr VTN on 127.0.0.1 that admits one VEN and records what it says."""

    port: int = field(default_factory=free_port)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    opts: dict[str, str] = field(default_factory=dict)
    offered: list[tuple[str, str]] = field(default_factory=list)
    readings: list[float] = field(default_factory=list)
    server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/OpenADR2/Simple/2.0b"

    async def start(self) -> None:
        self.server = OpenADRServer(vtn_id="UTILITY-VTN", http_port=self.port,
                                    http_host="127.0.0.1", show_fingerprint=False,
                                    requested_poll_freq=timedelta(seconds=1))
        self.server.add_handler("on_create_party_registration", self._register)
        self.server.add_handler("on_register_report", self._offer)
        await self.server.run()

    async def stop(self) -> None:
        await self.server.stop()

    async def _register(self, info: dict[str, Any]) -> tuple[str, str]:
        self.registrations.append(info)
        return VEN_ID, "reg-1"

    async def _offer(self, ven_id: str, resource_id: str, measurement: str, unit: str,
                     scale: str, min_sampling_interval: timedelta,
                     max_sampling_interval: timedelta) -> tuple[Any, timedelta]:
        self.offered.append((resource_id, measurement))
        return self._reading, min_sampling_interval

    async def _reading(self, data: list[tuple[datetime, float]]) -> None:
        self.readings += [value for _, value in data]

    def _answered(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opts[event_id] = opt_type

    def event(self, signal_name: str, signal_type: str, payloads: list[float], *,
              start: datetime, minutes: int = 10, resource: str = "plaza-dc",
              priority: int | None = None) -> str:
        intervals = [{"dtstart": start + timedelta(minutes=minutes * i),
                      "duration": timedelta(minutes=minutes), "signal_payload": p}
                     for i, p in enumerate(payloads)]
        event_id: str = self.server.add_event(
            ven_id=VEN_ID, signal_name=signal_name, signal_type=signal_type,
            intervals=intervals, callback=self._answered,
            targets=[{"resource_id": resource}])
        if priority is not None:
            stored = self.server.events[VEN_ID][-1]
            stored.event_descriptor.priority = priority
        return event_id


SPEC: dict[str, Any] = {"ven_name": "gridshare-plaza", "zone": None,
                        "targets": {"plaza-dc": "Z1", "plaza-ac": "Z2"},
                        "levels": {1: 30, 2: 60, 3: 90}, "report_every": 1}


@pytest.fixture
async def vtn() -> AsyncIterator[Vtn]:
    server = Vtn()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def dr() -> FakeDr:
    return FakeDr(("Z1", "Z2"), SystemClock())  # type: ignore[arg-type]


async def running_ven(vtn: Vtn, dr: FakeDr, **spec: Any) -> OpenAdrVen:
    ven = OpenAdrVen(OpenAdrSpec(vtn_url=vtn.url, **{**SPEC, **spec}), dr, dr.clock,
                     zone_kw=lambda zone: 42.5 if zone == "Z1" else None)
    await ven.start()
    async with asyncio.timeout(20):
        await ven.registered.wait()
    return ven


# --- against a real VTN ---------------------------------------------------------------------


async def test_the_ven_registers_and_a_simple_event_reaches_the_service_opted_in(
        vtn: Vtn, dr: FakeDr) -> None:
    ven = await running_ven(vtn, dr)
    try:
        assert vtn.registrations[0]["ven_name"] == "gridshare-plaza"
        start = datetime.now(UTC) + timedelta(minutes=5)
        event_id = vtn.event("SIMPLE", "level", [2, 1], start=start)
        await eventually(lambda: event_id in vtn.opts)
        assert vtn.opts[event_id] == OPT_IN
        signals = [e.signal for e in dr.book.events()]
        assert [(s.zone_id, s.signal_type, s.target_reduction_kw, s.priority, s.source)
                for s in signals] == [("Z1", SignalType.CURTAIL, 60.0, DrPriority.ECONOMIC,
                                       "openadr"),
                                      ("Z1", SignalType.CURTAIL, 30.0, DrPriority.ECONOMIC,
                                       "openadr")]
        assert signals[0].start_ts == start.replace(microsecond=start.microsecond)
        assert signals[1].end_ts - signals[0].start_ts == timedelta(minutes=20)
        assert signals[0].signal_id == f"oadr-{event_id}-0-Z1-0"
        # the VTN keeps handing it out on every poll: nothing new is stored
        polls = len(dr.submitted)
        await asyncio.sleep(2.5)
        assert len(dr.book) == 2
        assert len(dr.submitted) == polls
    finally:
        await ven.stop()


async def test_an_optional_event_is_opted_out_by_policy_and_not_applied(
        vtn: Vtn, dr: FakeDr) -> None:
    ven = await running_ven(vtn, dr, priorities={4: 3}, opt_out=[3])
    try:
        start = datetime.now(UTC) + timedelta(minutes=5)
        event_id = vtn.event("SIMPLE", "level", [1], start=start, priority=4)
        await eventually(lambda: event_id in vtn.opts)
        assert vtn.opts[event_id] == OPT_OUT
        assert "opt_out" in ven.refusals[event_id]
        assert len(dr.book) == 0
    finally:
        await ven.stop()


async def test_a_kw_dispatch_is_shed_as_an_emergency_and_cancelling_it_restores(
        vtn: Vtn, dr: FakeDr) -> None:
    ven = await running_ven(vtn, dr, priorities={1: 1}, signal_type="SHED")
    try:
        start = datetime.now(UTC) - timedelta(seconds=1)
        event_id = vtn.event("LOAD_DISPATCH", "delta", [-45], start=start, priority=1,
                             resource="plaza-ac")
        await eventually(lambda: event_id in vtn.opts)
        assert vtn.opts[event_id] == OPT_IN
        (event,) = dr.book.events()
        assert (event.signal.zone_id, event.signal.signal_type,
                event.signal.target_reduction_kw, event.signal.priority) == (
            "Z2", SignalType.SHED, 45.0, DrPriority.EMERGENCY)
        assert event.state(datetime.now(UTC)) is EventState.ACTIVE
        vtn.server.cancel_event(VEN_ID, event_id)
        await eventually(lambda: len(dr.book) == 2)
        restore = next(e.signal for e in dr.book.events()
                       if e.signal.signal_type is SignalType.RESTORE)
        assert (restore.zone_id, restore.priority) == ("Z2", DrPriority.EMERGENCY)
        assert event.state(datetime.now(UTC)) is EventState.ENDED
    finally:
        await ven.stop()


async def test_the_ven_reports_each_zones_draw(vtn: Vtn, dr: FakeDr) -> None:
    ven = await running_ven(vtn, dr)
    try:
        assert ("Z1", "RealPower") in vtn.offered
        await eventually(lambda: 42.5 in vtn.readings)
    finally:
        await ven.stop()


async def test_the_ven_keeps_trying_until_the_vtn_is_up(dr: FakeDr) -> None:
    late = Vtn()
    ven = OpenAdrVen(OpenAdrSpec(vtn_url=late.url, **SPEC), dr, dr.clock)
    await ven.start()
    try:
        await asyncio.sleep(1.5)  # let it fail at least once: nobody listens there
        assert not ven.registered.is_set()
        await late.start()
        async with asyncio.timeout(20):
            await ven.registered.wait()
        assert late.registrations
    finally:
        await ven.stop()
        if late.server is not None:
            await late.stop()


async def test_a_missing_key_file_is_logged_and_retried_not_raised(
        dr: FakeDr, tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    spec = OpenAdrSpec(vtn_url="http://127.0.0.1:9/x", cert=tmp_path / "ven.pem",
                       key=tmp_path / "ven.key", **SPEC)
    ven = OpenAdrVen(spec, dr, dr.clock)
    await ven.start()
    try:
        await eventually(lambda: any("cannot start" in r.getMessage()
                                     for r in caplog.records), timeout_s=5)
        assert ven._task is not None and not ven._task.done()
        assert not ven.registered.is_set()
    finally:
        await ven.stop()


# --- the mapping, event by event --------------------------------------------------------------


def oadr_event(signals: list[dict[str, Any]], *, event_id: str = "ev-1",
               modification: int = 0, status: str = "far", priority: int = 0,
               targets: list[dict[str, Any]] | None = None,
               start: datetime | None = None, test_event: bool = False) -> dict[str, Any]:
    """An event as openleadr hands it to ``on_event``."""
    begin = start or datetime(2030, 1, 1, 12, tzinfo=UTC)
    for signal in signals:
        for i, interval in enumerate(signal["intervals"]):
            interval.setdefault("uid", i)
            interval.setdefault("duration", timedelta(minutes=15))
            interval.setdefault("dtstart", begin + timedelta(minutes=15 * i))
    return {"event_descriptor": {"event_id": event_id, "modification_number": modification,
                                 "priority": priority, "event_status": status,
                                 "test_event": test_event},
            "active_period": {"dtstart": begin, "duration": timedelta(hours=1)},
            "event_signals": signals, "targets": targets or [{"resource_id": "plaza-dc"}],
            "response_required": "always"}


def simple(*levels: float) -> dict[str, Any]:
    return {"signal_name": "SIMPLE", "signal_type": "level",
            "intervals": [{"signal_payload": level} for level in levels]}


@pytest.fixture
def ven(dr: FakeDr) -> OpenAdrVen:
    return OpenAdrVen(OpenAdrSpec(vtn_url="http://vtn.invalid/OpenADR2/Simple/2.0b", **SPEC),
                      dr, dr.clock)


@pytest.mark.parametrize(("event", "words"), [
    (oadr_event([{"signal_name": "ELECTRICITY_PRICE", "signal_type": "price",
                  "intervals": [{"signal_payload": 0.3}]}]), "no signal gridshare understands"),
    (oadr_event([simple(2)], targets=[{"resource_id": "elsewhere"}]), "no zone"),
    (oadr_event([simple(0, 0)]), "no interval asks for a reduction"),
    (oadr_event([{"signal_name": "LOAD_DISPATCH", "signal_type": "delta",
                  "intervals": [{"signal_payload": 20}]}]), "asks for more load"),
    (oadr_event([{"signal_name": "SIMPLE", "signal_type": "level",
                  "intervals": [{"signal_payload": 7}]}]), "no kW for level 7"),
], ids=["price-only", "unmapped-target", "all-normal", "positive-delta", "unknown-level"])
def test_an_event_gridshare_cannot_apply_is_refused_with_the_reason(
        ven: OpenAdrVen, dr: FakeDr, event: dict[str, Any], words: str) -> None:
    with pytest.raises(EventRefused, match=words):
        ven.apply(event)
    assert len(dr.book) == 0


async def test_an_event_for_two_zones_is_applied_whole_or_not_at_all(
        ven: OpenAdrVen, dr: FakeDr) -> None:
    both = [{"resource_id": "plaza-dc"}, {"resource_id": "plaza-ac"}]
    taken = oadr_event([simple(1)], event_id="ev-taken", targets=both)
    # another signal already holds the id the Z2 half would get
    squatter = {"signal_id": "oadr-ev-taken-0-Z2-0", "zone_id": "Z2",
                "signal_type": "CURTAIL", "target_reduction_kw": 5,
                "start_ts": "2030-01-01T12:00:00Z", "end_ts": "2030-01-01T12:15:00Z",
                "priority": 2}
    dr.submit(signal_from_json(squatter, zones=dr.zones, now=dr.clock.now()))
    assert await ven.on_event(taken) == OPT_OUT
    assert "stored with other content" in ven.refusals["ev-taken"]
    assert [e.signal.zone_id for e in dr.book.events()] == ["Z2"]  # the Z1 half not stored


def test_a_modified_event_ends_the_previous_version_and_a_redelivery_is_idempotent(
        ven: OpenAdrVen, dr: FakeDr) -> None:
    start = dr.clock.now() + timedelta(hours=1)
    assert ven.apply(oadr_event([simple(1)], start=start)) == OPT_IN
    assert ven.apply(oadr_event([simple(1)], start=start)) == OPT_IN
    assert len(dr.book) == 1
    assert ven.apply(oadr_event([simple(3)], start=start, modification=1)) == OPT_IN
    events = {e.signal.signal_id: e for e in dr.book.events()}
    old, new = events["oadr-ev-1-0-Z1-0"], events["oadr-ev-1-1-Z1-0"]
    assert new.signal.target_reduction_kw == 90
    assert old.ends_at() == start  # ended before it began: never in force
    assert new.ends_at() == new.signal.end_ts
    assert "oadr-ev-1-0-Z1-0-restore" in events


def test_a_test_event_is_opted_in_and_not_applied(ven: OpenAdrVen, dr: FakeDr) -> None:
    assert ven.apply(oadr_event([simple(2)], test_event=True)) == OPT_IN
    assert len(dr.book) == 0


def test_the_default_zone_takes_an_event_with_no_mapped_target(dr: FakeDr) -> None:
    ven = OpenAdrVen(OpenAdrSpec(vtn_url="http://vtn.invalid/x", ven_name="v", zone="Z2",
                                 levels={1: 12.5}), dr, dr.clock)
    assert ven.apply(oadr_event([simple(1)], targets=[{"ven_id": "whoever"}])) == OPT_IN
    assert [(e.signal.zone_id, e.signal.target_reduction_kw) for e in dr.book.events()] == [
        ("Z2", 12.5)]


def test_the_spec_names_its_zones_for_the_site_check() -> None:
    spec = OpenAdrSpec(vtn_url="https://vtn.example.com/OpenADR2/Simple/2.0b", ven_name="v",
                       zone="Z1", targets={"plaza-ac": "Z2"})
    assert spec.zones_named() == [(("zone",), "Z1"), (("targets", "plaza-ac"), "Z2")]


# --- into the real DR service, configured by the site file -----------------------------------

APP_SITE = """
site: plaza
voltage: 230
zones: [{id: Z1}, {id: Z2}]
groups:
  - {id: main, max_current: 200, chargers: [dc-1, ac-1]}
chargers:
  - {id: dc-1, max_current: 32, phases: 3, zone: Z1}
  - {id: ac-1, max_current: 32, phases: 3, zone: Z2}
demand_response:
  openadr:
    vtn_url: VTN_URL
    ven_name: gridshare-plaza
    targets: {plaza-dc: Z1}
    levels: {1: 30, 2: 60, 3: 90}
    opt_out: [3]
"""


async def test_the_site_files_ven_takes_an_event_into_the_apps_dr_service(vtn: Vtn) -> None:
    from gridshare.app import build_app, serve_options
    from gridshare.config import parse_site_config

    config = parse_site_config(APP_SITE.replace("VTN_URL", vtn.url), "plaza.yaml")
    app = build_app(config.topology, serve_options(config, host="127.0.0.1", ocpp_port=0,
                                                   api_port=None, db_url="none"))
    await app.start()
    try:
        ven = app.dr_openadr
        assert app.dr is not None and ven is not None
        async with asyncio.timeout(20):
            await ven.registered.wait()
        assert vtn.registrations[0]["ven_name"] == "gridshare-plaza"
        start = datetime.now(UTC) - timedelta(seconds=1)
        event_id = vtn.event("SIMPLE", "level", [3], start=start)
        await eventually(lambda: event_id in vtn.opts)
        assert vtn.opts[event_id] == OPT_IN
        stored = app.dr.get(f"oadr-{event_id}-0-Z1-0")
        assert stored is not None
        assert (stored.signal.source, stored.signal.target_reduction_kw) == ("openadr", 90.0)
        assert stored.state(app.clock.now()) is EventState.ACTIVE
        shown = app.dr.event_json(stored)
        assert shown["state"] == "active" and shown["compliance"] is not None
        assert ("Z1", "RealPower") in vtn.offered  # the zone's draw, from the DR service
    finally:
        await app.stop()
