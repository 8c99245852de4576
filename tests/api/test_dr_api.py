"""``POST /api/v1/dr/signals`` and ``GET /api/v1/dr/events``: the issue's status codes,
bodies and problem details, never half-applied.

Most cases are served by a FastAPI app with the API's own router, error handling and auth
in front of a small DR service on the real core event book (:class:`FakeDr`, also used by
the MQTT, OpenADR and CLI tests); the last ones run on the real app (the e2e rig: CSMS,
controller, DR service, simulated chargers, the API over HTTP).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from gridshare.api.auth import Auth
from gridshare.api.dr import DrEventOut, create_router
from gridshare.api.problems import PROBLEM_JSON, install
from gridshare.clock import FakeClock
from gridshare.core.dr.book import DrEvent, EventBook, Submitted
from gridshare.core.dr.signals import DrSignal

from .conftest import AUTH, TOKEN, ApiRig

T0 = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)


class FakeDr:
    """The DR service's interface on the real event book (no controller behind it)."""

    def __init__(self, zones: tuple[str, ...], clock: FakeClock) -> None:
        self.zones = zones
        self.clock = clock
        self.book = EventBook()
        self.submitted: list[DrSignal] = []
        self._alerts: list[dict[str, Any]] = []
        self._listeners: list[Callable[[dict[str, Any]], None]] = []

    def submit(self, signal: DrSignal) -> tuple[Submitted, DrEvent]:
        self.submitted.append(signal)
        return self.book.submit(signal, self.clock.now())

    def events(self, zone: str | None = None) -> list[DrEvent]:
        return self.book.events(zone)

    def event_json(self, event: DrEvent) -> dict[str, Any]:
        return {**event.signal.to_json(), "source": event.signal.source,
                "state": event.state(self.clock.now()).value,
                "target_kw": event.signal.target_reduction_kw,
                "compliance": {"signal_id": event.signal.signal_id, "verdict": "pending"}}

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._alerts)

    def on_alert(self, callback: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.append(callback)

    def alert(self, alert: dict[str, Any]) -> None:
        self._alerts.append(alert)
        for callback in self._listeners:
            callback(alert)


def signal(**changes: Any) -> dict[str, Any]:
    body = {"signal_id": "grid-017", "zone_id": "Z1", "signal_type": "CURTAIL",
            "target_reduction_kw": 90, "start_ts": "2026-11-30T17:00:00Z",
            "end_ts": "2026-11-30T18:00:00Z", "priority": 2,
            "received_ts": "2026-11-30T16:00:00Z"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def dr_api(dr: FakeDr | None, clock: FakeClock, tokens: tuple[str, ...] = (TOKEN,)) -> FastAPI:
    api = FastAPI()
    install(api)
    auth = Auth(tokens)

    def read(request: Request) -> None:
        auth.require_read(request)

    def write(request: Request) -> None:
        auth.require_write(request)

    api.include_router(create_router(lambda: dr, clock, write, read))
    return api


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def dr(clock: FakeClock) -> FakeDr:
    return FakeDr(("Z1", "Z2"), clock)


@pytest.fixture
async def client(dr: FakeDr, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=dr_api(dr, clock))
    async with httpx.AsyncClient(transport=transport, base_url="http://dr") as c:
        yield c


async def post(client: httpx.AsyncClient, body: Any) -> httpx.Response:
    return await client.post("/api/v1/dr/signals", headers=AUTH,
                             content=body if isinstance(body, bytes) else json.dumps(body))


async def test_a_new_signal_is_stored_and_answered_201_with_the_event(
        client: httpx.AsyncClient, dr: FakeDr) -> None:
    got = await post(client, signal())
    assert got.status_code == 201, got.text
    event = got.json()
    DrEventOut.model_validate(event)
    assert event["id"] == event["signal_id"] == "grid-017"
    assert event["state"] == "scheduled"
    assert event["target_reduction_kw"] == 90
    assert event["start_ts"] == "2026-11-30T17:00:00Z"
    assert event["source"] == "rest"
    listed = (await client.get("/api/v1/dr/events")).json()["events"]
    assert listed == [event]


async def test_an_identical_redelivery_is_200_and_changes_nothing(
        client: httpx.AsyncClient, dr: FakeDr, clock: FakeClock) -> None:
    first = await post(client, signal())
    clock.advance(5)
    again = await post(client, signal(received_ts="2026-11-30T16:00:05Z"))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert len(dr.book) == 1


async def test_the_same_id_with_other_content_is_409_and_the_stored_event_stays(
        client: httpx.AsyncClient, dr: FakeDr) -> None:
    first = await post(client, signal())
    got = await post(client, signal(target_reduction_kw=120))
    assert got.status_code == 409
    assert got.headers["content-type"] == PROBLEM_JSON
    problem = got.json()
    assert problem["type"] == "urn:gridshare:problem:signal-conflict"
    assert "grid-017" in problem["detail"] and "target_reduction_kw" in problem["detail"]
    listed = (await client.get("/api/v1/dr/events")).json()["events"]
    assert listed == [first.json()]


@pytest.mark.parametrize(("body", "field", "words"), [
    (signal(zone_id="Z9"), "zone_id", "unknown zone 'Z9'"),
    (signal(end_ts="2026-11-30T16:30:00Z"), "end_ts", "must be after start_ts"),
    (signal(target_reduction_kw=-5), "target_reduction_kw", "must not be negative"),
    (signal(target_reduction_kw="90"), "target_reduction_kw", "expected a number"),
    (signal(signal_type="DIM"), "signal_type", "unknown signal_type 'DIM'"),
    (signal(priority=4), "priority", "must be 1 (emergency), 2 (economic) or 3"),
    (signal(start_ts="2026-11-30T17:00:00"), "start_ts", "needs a UTC offset"),
    (signal(zone_id=...), "zone_id", "missing"),
    (signal(colour="red"), "colour", "unknown field"),
], ids=["unknown-zone", "end-before-start", "negative-target", "target-text",
        "unknown-type", "priority-4", "naive-time", "missing-zone", "unknown-field"])
async def test_an_invalid_signal_is_422_naming_the_field_and_nothing_is_stored(
        client: httpx.AsyncClient, dr: FakeDr, body: dict[str, Any], field: str,
        words: str) -> None:
    got = await post(client, body)
    assert got.status_code == 422, got.text
    assert got.headers["content-type"] == PROBLEM_JSON
    problem = got.json()
    assert problem["type"] == "urn:gridshare:problem:validation-error"
    assert problem["detail"].startswith(f"body.{field}: ")
    assert words in problem["detail"]
    assert problem["errors"][0]["loc"] == ["body", field]
    assert len(dr.book) == 0
    assert (await client.get("/api/v1/dr/events")).json() == {"events": []}


@pytest.mark.parametrize(("raw", "words"), [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[" * 60_000, "nested too deeply"),
])
async def test_a_body_that_is_no_signal_object_is_422(client: httpx.AsyncClient, dr: FakeDr,
                                                      raw: bytes, words: str) -> None:
    got = await post(client, raw)
    assert got.status_code == 422
    assert words in got.json()["detail"]
    assert got.json()["errors"][0]["loc"] == ["body"]
    assert len(dr.book) == 0


async def test_a_huge_body_is_refused_before_it_is_parsed(client: httpx.AsyncClient,
                                                          dr: FakeDr) -> None:
    got = await post(client, signal(signal_id="x" * 100_000))
    assert got.status_code == 413

    async def endless() -> AsyncIterator[bytes]:  # chunked: no Content-Length to go by
        yield b'{"signal_id": "'
        for _ in range(1000):
            yield b"x" * 1024

    chunked = await client.post("/api/v1/dr/signals", headers=AUTH, content=endless())
    assert chunked.status_code == 413
    assert chunked.json()["type"] == "urn:gridshare:problem:too-large"
    assert len(dr.book) == 0


async def test_state_follows_the_clock(client: httpx.AsyncClient, clock: FakeClock) -> None:
    await post(client, signal())
    states = []
    for at in (T0, T0.replace(hour=17), T0.replace(hour=18)):
        clock.set(at)
        states.append((await client.get("/api/v1/dr/events")).json()["events"][0]["state"])
    assert states == ["scheduled", "active", "ended"]


async def test_events_filter_by_zone_and_an_unknown_zone_is_404(
        client: httpx.AsyncClient) -> None:
    await post(client, signal())
    await post(client, signal(signal_id="grid-018", zone_id="Z2", signal_type="SHED"))
    z2 = (await client.get("/api/v1/dr/events", params={"zone": "Z2"})).json()["events"]
    assert [e["signal_id"] for e in z2] == ["grid-018"]
    assert z2[0]["signal_type"] == "SHED"
    unknown = await client.get("/api/v1/dr/events", params={"zone": "Z9"})
    assert unknown.status_code == 404
    assert unknown.json()["type"] == "urn:gridshare:problem:unknown-zone"


async def test_a_restore_ends_the_zones_event_at_its_start(client: httpx.AsyncClient,
                                                           clock: FakeClock) -> None:
    await post(client, signal())
    restore = signal(signal_id="grid-019", signal_type="RESTORE", target_reduction_kw=0,
                     start_ts="2026-11-30T17:20:00Z", end_ts="2026-11-30T17:21:00Z")
    assert (await post(client, restore)).status_code == 201
    clock.set(datetime(2026, 11, 30, 17, 30, tzinfo=UTC))
    events = {e["signal_id"]: e for e in
              (await client.get("/api/v1/dr/events")).json()["events"]}
    assert events["grid-017"]["state"] == "ended"


async def test_changes_need_a_token(dr: FakeDr, clock: FakeClock) -> None:
    transport = httpx.ASGITransport(app=dr_api(dr, clock))
    async with httpx.AsyncClient(transport=transport, base_url="http://dr") as c:
        missing = await c.post("/api/v1/dr/signals", json=signal())
        wrong = await c.post("/api/v1/dr/signals", json=signal(),
                             headers={"Authorization": "Bearer nope"})
    none = dr_api(dr, clock, tokens=())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=none),
                                 base_url="http://dr") as c:
        unconfigured = await c.post("/api/v1/dr/signals", json=signal(), headers=AUTH)
    assert (missing.status_code, wrong.status_code, unconfigured.status_code) == (401, 401, 403)
    assert len(dr.book) == 0


async def test_a_site_without_zones_refuses_signals_and_lists_none(clock: FakeClock) -> None:
    transport = httpx.ASGITransport(app=dr_api(None, clock))
    async with httpx.AsyncClient(transport=transport, base_url="http://dr") as c:
        got = await c.post("/api/v1/dr/signals", json=signal(), headers=AUTH)
        listed = await c.get("/api/v1/dr/events")
    assert got.status_code == 422
    assert "declares no zones" in got.json()["detail"]
    assert listed.json() == {"events": []}


async def test_alerts_are_listed(client: httpx.AsyncClient, dr: FakeDr) -> None:
    dr.alert({"kind": "dr-not-met", "signal_id": "grid-017", "message": "short by 12 kW"})
    got = (await client.get("/api/v1/dr/alerts")).json()
    assert got == {"alerts": [{"kind": "dr-not-met", "signal_id": "grid-017",
                               "message": "short by 12 kW"}]}


async def test_the_routes_are_in_a_valid_openapi_document(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    validate(spec)
    post_op = spec["paths"]["/api/v1/dr/signals"]["post"]
    body = post_op["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"signal_id", "zone_id", "signal_type",
                                     "target_reduction_kw", "start_ts", "end_ts", "priority"}
    assert {"200", "201", "409", "422"} <= set(post_op["responses"])
    assert "/api/v1/dr/events" in spec["paths"]


async def test_a_signal_starting_now_is_active_at_once(client: httpx.AsyncClient,
                                                       clock: FakeClock) -> None:
    start = clock.now()
    got = await post(client, signal(start_ts=start.isoformat(),
                                    end_ts=(start + timedelta(minutes=30)).isoformat()))
    assert got.status_code == 201
    assert got.json()["state"] == "active"


# --- on the real app: the rig's CSMS, controller and DR service, the API over HTTP ----------

ZONED_SITE = """
site: e2e
voltage: 230
zones:
  - {id: Z1, capacity_kw: 60}
  - {id: Z2}
groups:
  - id: service
    max_current: 40
    groups:
      - {id: left, max_current: 25, chargers: [e-1, e-2, e-3]}
      - {id: right, max_current: 25, chargers: [e-4, e-5, e-6]}
chargers:
  - {id: e-1, max_current: 32, phases: 3, failsafe_current: 0, zone: Z1}
  - {id: e-2, max_current: 32, phases: 3, failsafe_current: 0, zone: Z1}
  - {id: e-3, max_current: 16, phases: 1, phase: L2, failsafe_current: 0, zone: Z1}
  - {id: e-4, max_current: 32, phases: 3, failsafe_current: 0, zone: Z2}
  - {id: e-5, max_current: 32, phases: 3, failsafe_current: 6, zone: Z2}
  - {id: e-6, max_current: 16, phases: 1, phase: L3, failsafe_current: 0}
"""


@pytest.fixture
async def zoned(tmp_path: Path) -> AsyncIterator[ApiRig]:
    r = ApiRig("ocpp1.6", tmp_path / "var", site=ZONED_SITE)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def real_signal(rig: ApiRig, **changes: Any) -> dict[str, Any]:
    now = rig.app.clock.now()
    return signal(start_ts=(now + timedelta(minutes=10)).isoformat(),
                  end_ts=(now + timedelta(minutes=70)).isoformat(),
                  received_ts=now.isoformat(), **changes)


async def test_the_real_app_stores_redelivers_refuses_and_lists(zoned: ApiRig) -> None:
    client = zoned.client
    body = real_signal(zoned)
    created = await client.post("/api/v1/dr/signals", json=body, headers=AUTH)
    assert created.status_code == 201, created.text
    event = created.json()
    DrEventOut.model_validate(event)
    assert (event["id"], event["state"], event["target_kw"], event["target"],
            event["source"]) == ("grid-017", "scheduled", 90, 90, "rest")
    assert zoned.app.dr is not None and zoned.app.dr.get("grid-017") is not None

    again = await client.post("/api/v1/dr/signals", json=body, headers=AUTH)
    assert (again.status_code, again.json()) == (200, event)
    conflict = await client.post("/api/v1/dr/signals", headers=AUTH,
                                 json={**body, "target_reduction_kw": 10})
    assert conflict.status_code == 409
    invalid = await client.post("/api/v1/dr/signals", headers=AUTH,
                                json={**body, "signal_id": "other", "zone_id": "Z7"})
    assert invalid.status_code == 422
    assert invalid.json()["errors"][0]["loc"] == ["body", "zone_id"]
    anonymous = await client.post("/api/v1/dr/signals", json={**body, "signal_id": "anon"})
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == PROBLEM_JSON

    z1 = (await client.get("/api/v1/dr/events", params={"zone": "Z1"})).json()["events"]
    assert [e["id"] for e in z1] == ["grid-017"]
    assert (await client.get("/api/v1/dr/events", params={"zone": "Z2"})).json() == {
        "events": []}
    assert [e.signal.signal_id for e in zoned.app.dr.events()] == ["grid-017"]


async def test_an_active_event_on_the_real_app_carries_its_compliance_record(
        zoned: ApiRig) -> None:
    now = zoned.app.clock.now()
    body = signal(signal_id="now-1", target_reduction_kw=5, start_ts=now.isoformat(),
                  end_ts=(now + timedelta(minutes=30)).isoformat(), received_ts=...)
    got = await zoned.client.post("/api/v1/dr/signals", json=body, headers=AUTH)
    assert got.status_code == 201, got.text
    assert got.json()["state"] == "active"
    events = (await zoned.client.get("/api/v1/dr/events")).json()["events"]
    compliance = events[0]["compliance"]
    assert compliance is not None and compliance["verdict"] in ("pending", "met")
    assert compliance["target_kw"] == 5


async def test_the_real_apps_openapi_document_has_the_dr_routes(zoned: ApiRig) -> None:
    spec = (await zoned.client.get("/openapi.json")).json()
    validate(spec)
    assert {"/api/v1/dr/signals", "/api/v1/dr/events", "/api/v1/dr/alerts"} <= set(
        spec["paths"])
    security = spec["paths"]["/api/v1/dr/signals"]["post"].get("security")
    assert security, "the write route shows its bearer token in the document"


async def test_the_dashboard_shows_the_active_event_with_target_and_verdict(
        zoned: ApiRig) -> None:
    from playwright.async_api import async_playwright, expect

    chromium = os.environ.get("GRIDSHARE_CHROMIUM", "/usr/bin/chromium")
    if not os.access(chromium, os.X_OK):
        pytest.fail(f"{chromium} is missing: scripts/setup installs it")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://127.0.0.1:{zoned.app.api_port}/")
            zone = page.locator("#dr-zones li[data-zone='Z1']")
            await expect(zone).to_have_text(
                re.compile(r"^Z1 · [\d.]+ kW of 60 kW \([\d.]+ %\) · \d+ active$"))
            await expect(page.locator("#dr p.none")).to_have_text("no event in force")
            now = zoned.app.clock.now()
            body = signal(signal_id="dash-1", target_reduction_kw=7.5,
                          start_ts=now.isoformat(), received_ts=...,
                          end_ts=(now + timedelta(minutes=30)).isoformat())
            got = await zoned.client.post("/api/v1/dr/signals", json=body, headers=AUTH)
            assert got.status_code == 201
            row = page.locator("#dr-events tr[data-signal='dash-1']")
            await expect(row).to_have_count(1, timeout=10_000)  # with the next site update
            await expect(row.locator("td[data-label='Zone']")).to_have_text("Z1")
            await expect(row.locator("td[data-label='Target']")).to_have_text("7.5 kW")
            await expect(row.locator("td[data-label='Verdict']")).to_have_text(
                re.compile("^(pending|met)$"))
            assert errors == []
        finally:
            await browser.close()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)
FIELD_VALUES = st.one_of(JSON_VALUES, st.sampled_from(
    ["Z1", "Z9", "CURTAIL", "RESTORE", "2026-11-30T17:00:00Z", "2026-11-30T16:00:00+01:00",
     "2026-11-30T17:00:00", 1, 2, 3, 0, -1, 90.5]))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(JSON_VALUES, st.fixed_dictionaries(
    {}, optional=dict.fromkeys(signal(), FIELD_VALUES))))
def test_any_json_body_is_stored_or_refused_never_a_server_error(body: Any) -> None:
    clock = FakeClock(T0)
    dr = FakeDr(("Z1", "Z2"), clock)

    async def post_once() -> httpx.Response:
        transport = httpx.ASGITransport(app=dr_api(dr, clock))
        async with httpx.AsyncClient(transport=transport, base_url="http://dr") as c:
            return await c.post("/api/v1/dr/signals", headers=AUTH, content=json.dumps(body))

    got = asyncio.run(post_once())
    assert got.status_code in (201, 422), got.text
    assert len(dr.book) == (1 if got.status_code == 201 else 0)
    if got.status_code == 422:
        assert got.json()["errors"][0]["loc"][0] == "body"
