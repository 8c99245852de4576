"""Prometheus ``GET /metrics`` of a running app (CSMS + controller) with simulated OCPP
chargers: the exposition parses with prometheus_client's own parser and its values are the
controller's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from waits import eventually

from gridshare.api import metrics
from gridshare.app import GridshareApp, ServeOptions, build_app
from gridshare.config import MeterSpec, parse_site
from gridshare.controller.loop import ControllerSettings
from gridshare.events import ConnectorStatus, LimitChanged, MeterSample, StatusChanged
from gridshare.sim import EV, SimCharger
from gridshare.sim.site import SimSite

SITE = """
site: metered
voltage: 230
groups:
  - id: service
    max_current: 40
    groups:
      - {id: left, max_current: 25, chargers: [m-1, m-2]}
      - {id: right, max_power: 11, chargers: [m-3]}
chargers:
  - {id: m-1, max_current: 32, phases: 3, failsafe_current: 0}
  - {id: m-2, max_current: 32, phases: 3, failsafe_current: 0}
  - {id: m-3, max_current: 16, phases: 1, phase: L2, failsafe_current: 6}
"""




class Scraped:
    """One scrape, parsed."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float | None:
        found = [s.value for s in self.samples
                 if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None

    def total(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


class Site:
    def __init__(self) -> None:
        self.topology = parse_site(SITE, "metered")
        settings = ControllerSettings(lease_s=60.0, settle_s=1.0, debounce_s=0.02,
                                      tick_s=0.25, retry_backoff_s=0.2)
        self.app: GridshareApp = build_app(self.topology, ServeOptions(
            host="127.0.0.1", ocpp_port=0, api_port=None, db_url="none",
            controller=settings))
        self.api = FastAPI()
        metrics.register(self.api, self.app)
        self.sim = SimSite(tick_s=0.1)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.api),
                                      base_url="http://gridshare")

    async def start(self) -> None:
        await self.app.start()
        url = f"ws://127.0.0.1:{self.app.ocpp_port}"
        for cid, ch in self.topology.chargers.items():
            self.sim.add_charger(SimCharger(
                cid, url, protocol="ocpp2.0.1" if cid == "m-2" else "ocpp1.6",
                phases=ch.phases, phase=ch.phase.name if ch.phase is not None else "L1",
                max_current_a=ch.max_current, min_current_a=ch.min_current,
                meter_interval_s=1.0))
        assert await self.sim.start(wait_connected_s=10.0) == 3
        await eventually(lambda: self.app.controller.state.online_count() == 3)

    async def stop(self) -> None:
        await self.http.aclose()
        await self.sim.stop()
        await self.app.stop()

    def plug(self, charger: str) -> None:
        ev = EV(capacity_kwh=60.0, soc=0.3, max_current_a=32.0, setpoint_lag_s=0.2)
        self.sim.chargers[charger].plug_nowait(1, ev)

    def offered(self, charger: str) -> float:
        return self.sim.chargers[charger].offered_a(1)

    async def scrape(self, accept: str = "") -> Scraped:
        response = await self.http.get("/metrics", headers={"Accept": accept} if accept
                                       else {})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return Scraped(response.text)


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    s = Site()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def test_values_match_the_controller(site: Site) -> None:
    site.plug("m-1")
    site.plug("m-2")
    site.plug("m-3")
    await eventually(lambda: site.offered("m-1") == site.offered("m-2") == 12.5)
    await eventually(lambda: site.app.controller.idle and
                     site.app.controller.in_force().get(("m-2", 1)) == 12.5)
    scraped = await site.scrape()
    status = site.app.controller.status()
    for g in status.groups:
        for i, phase in enumerate(("L1", "L2", "L3")):
            load = scraped.value("gridshare_group_load_amperes", group=g.id, phase=phase)
            assert load == pytest.approx(g.counted_a[i] + g.uncontrolled_a[i])
            assert scraped.value("gridshare_group_setpoints_amperes", group=g.id,
                                 phase=phase) == pytest.approx(g.allocated_a[i])
    # A group's load and limit: left holds two cars at 12.5 A on every phase.
    assert scraped.value("gridshare_group_limit_amperes", group="left", phase="L1") == 25.0
    assert scraped.value("gridshare_group_load_amperes", group="left", phase="L3") == 25.0
    assert scraped.value("gridshare_group_limit_amperes", group="service", phase="L2") == 40.0
    # A group limited only in kW has no A limit sample (not a made-up number), but its power
    # limit in W.
    assert scraped.value("gridshare_group_limit_amperes", group="right", phase="L1") is None
    assert scraped.value("gridshare_group_power_limit_watts", group="right") == 11_000.0
    # A charger's setpoint is the one in force in the controller.
    in_force = site.app.controller.in_force()
    for cid in ("m-1", "m-2", "m-3"):
        assert scraped.value("gridshare_connector_setpoint_amperes", charger=cid,
                             connector="1") == in_force[(cid, 1)]
        assert scraped.value("gridshare_connector_active", charger=cid, connector="1") == 1.0
        assert scraped.value("gridshare_charger_online", charger=cid) == 1.0
    assert scraped.value("gridshare_connector_setpoint_amperes", charger="m-1",
                         connector="1") == 12.5
    # Connected chargers, as the controller counts them.
    assert scraped.value("gridshare_chargers_connected") == 3 == \
        site.app.controller.state.online_count()
    assert scraped.value("gridshare_chargers_configured") == 3
    assert scraped.value("gridshare_site_info", site="metered") == 1.0
    # Families that exist with no samples until there is something honest to say.
    assert "gridshare_dr_compliance_ratio" in scraped.families
    assert scraped.families["gridshare_dr_compliance_ratio"].samples == []
    # Alarms by kind start at 0 for every known kind.
    assert scraped.value("gridshare_alarms_total", kind="violation") == 0
    # Every charger's own meter values are counted as they come (each sends one a second;
    # the first may still be on its way when the setpoints have settled).
    for _ in range(50):
        if (await site.scrape()).value("gridshare_events_total", kind="MeterReading"):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("no MeterReading counted within 5 s")


async def test_command_latency_count_grows_after_commands(site: Site) -> None:
    before = await site.scrape()
    count_before = before.total("gridshare_command_latency_seconds_count")
    site.plug("m-1")
    await eventually(lambda: site.offered("m-1") == 25.0)
    site.plug("m-2")
    await eventually(lambda: site.offered("m-1") == site.offered("m-2") == 12.5)
    await eventually(lambda: site.app.controller.idle)
    after = await site.scrape()
    count_after = after.total("gridshare_command_latency_seconds_count")
    assert count_after > count_before
    # Every command with an outcome is counted by kind and result, once.
    assert after.total("gridshare_commands_total") == count_after
    assert after.total("gridshare_commands_total", result="accepted") >= 2
    assert after.total("gridshare_commands_total", kind="failsafe") >= 3
    assert after.total("gridshare_command_latency_seconds_sum") > 0
    # Buckets are cumulative and end in +Inf = count.
    inf = after.total("gridshare_command_latency_seconds_bucket", le="+Inf")
    assert inf == count_after
    assert after.total("gridshare_ocpp_calls_total") >= count_after
    assert after.total("gridshare_cycles_total") > 0
    assert after.total("gridshare_cycle_seconds_count") > 0


async def test_limits_overrides_alarms_and_errors_are_reflected(site: Site) -> None:
    site.plug("m-1")
    site.plug("m-2")
    await eventually(lambda: site.offered("m-1") == site.offered("m-2") == 12.5)
    app = site.app
    now = app.clock.now()
    app.bus.publish(LimitChanged("left", now, "operator", max_current=10.0,
                                 until=now + timedelta(hours=1)))
    await eventually(lambda: site.offered("m-1") + site.offered("m-2") <= 10.0)
    scraped = await site.scrape()
    assert scraped.value("gridshare_group_limit_amperes", group="left", phase="L2") == 10.0
    # Input the controller refuses is counted by kind.
    app.bus.publish(StatusChanged("nobody", 1, ConnectorStatus.AVAILABLE, now))
    app.bus.publish(LimitChanged("no-such-group", now, "operator", max_current=1.0))
    await eventually(lambda: app.controller.state.counters.rejected.get("unknown group") == 1)
    scraped = await site.scrape()
    assert scraped.value("gridshare_errors_total", component="controller",
                         kind="unknown charger") == 1
    assert scraped.value("gridshare_errors_total", component="controller",
                         kind="unknown group") == 1
    # A charger that refuses its profiles (over OCPP): counted per charger, with its
    # alarm, and the controller's retries.
    m1 = site.sim.chargers["m-1"]
    m1.install_profile = lambda profile: (False, "refused by the test")  # type: ignore[method-assign]
    # Lifting the override raises both cars again: m-1 refuses its raise.
    app.bus.publish(LimitChanged("left", app.clock.now(), "operator"))
    await eventually(lambda: app.controller.counters["setpoint_rejected"] >= 2)
    scraped = await site.scrape()
    # One scrape is one consistent view: each refusal counted once everywhere.
    rejected = scraped.total("gridshare_commands_total", result="rejected")
    assert scraped.value("gridshare_profiles_rejected_total", charger="m-1",
                         kind="setpoint") == rejected >= 2
    assert scraped.value("gridshare_profiles_rejected_total", charger="m-2",
                         kind="setpoint") is None
    assert scraped.value("gridshare_alarms_total", kind="rejected") == rejected
    assert scraped.value("gridshare_command_retries_total", kind="setpoint") >= 1


async def test_meter_samples_are_counted_per_meter() -> None:
    topology = parse_site("""
site: fed
groups:
  - {id: house, max_current: 25, meter: grid, chargers: [f-1]}
chargers:
  - {id: f-1, max_current: 16, phases: 3, failsafe_current: 0}
meters:
  - {id: grid, source: ocpp, charger: grid-meter}
""", "fed")
    app = build_app(topology, ServeOptions(
        host="127.0.0.1", ocpp_port=0, api_port=None, db_url="none",
        controller=ControllerSettings(tick_s=None, debounce_s=0.0),
        meters=(MeterSpec(id="grid", source="ocpp", charger="grid-meter"),)))
    api = FastAPI()
    metrics.register(api, app)
    metrics.register(api, app)  # twice: one set of hooks, counted once
    await app.start()
    try:
        for _ in range(3):
            app.bus.publish(MeterSample("grid", app.clock.now(), (5.0, 6.0, 7.0)))
        await eventually(lambda: app.controller.state.meter_sample("grid") is not None)
        await asyncio.sleep(0.05)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api),
                                     base_url="http://gridshare") as http:
            text = (await http.get("/metrics")).text
            om = await http.get("/metrics",
                                headers={"Accept": "application/openmetrics-text"})
        scraped = Scraped(text)
        assert scraped.value("gridshare_meter_samples_total", meter="grid", source="ocpp") == 3
        assert scraped.value("gridshare_meter_current_amperes", meter="grid",
                             phase="L3") == 7.0
        assert scraped.value("gridshare_meter_stale", meter="grid") == 0.0
        assert scraped.value("gridshare_group_meter_amperes", group="house", phase="L2") == 6.0
        assert scraped.value("gridshare_group_meter_stale", group="house") == 0.0
        # The charger f-1 never connected: offline, counted at its failsafe.
        assert scraped.value("gridshare_chargers_connected") == 0
        assert scraped.value("gridshare_charger_online", charger="f-1") == 0.0
        assert scraped.value("gridshare_connector_setpoint_amperes", charger="f-1",
                             connector="1") is None
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.rstrip().endswith("# EOF")
    finally:
        await app.stop()


@pytest.mark.parametrize("read_token", [False, True], ids=["open", "read-token"])
async def test_served_by_the_app_over_http(read_token: bool) -> None:
    """``gridshare serve``'s API (create_api) serves /metrics on its port; with
    ``api: {read_token: true}`` a scrape needs the bearer token like any read."""
    topology = parse_site(SITE, "metered")
    app = build_app(topology, ServeOptions(
        host="127.0.0.1", ocpp_port=0, api_port=0, db_url="none", api_tokens=("s3cret",),
        api_read_token=read_token))
    await app.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.api_port}") as http:
            bare = await http.get("/metrics")
            authed = await http.get("/metrics", headers={"Authorization": "Bearer s3cret"})
            wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
            schema = (await http.get("/openapi.json")).json()
        assert authed.status_code == 200
        scraped = Scraped(authed.text)
        assert scraped.value("gridshare_chargers_configured") == 3
        assert scraped.value("gridshare_chargers_connected") == 0
        assert scraped.value("gridshare_group_limit_amperes", group="left", phase="L1") == 25.0
        if read_token:
            assert bare.status_code == wrong.status_code == 401
            assert bare.headers["content-type"] == "application/problem+json"
        else:
            assert bare.status_code == 200
        assert "/metrics" in schema["paths"]
    finally:
        await app.stop()
