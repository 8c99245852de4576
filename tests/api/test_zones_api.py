"""``GET /api/v1/zones``, ``/api/v1/zones/{id}`` and ``/api/v1/stations/{id}/load`` on
the real app: simulated chargers over OCPP send their meter values, the app's load service
folds them into windows (4 s here, so that some close within the test), the API serves
them; unknown ids are 404 problems, reads follow the read-token rule."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from waits import eventually

from gridshare.api.problems import PROBLEM_JSON
from gridshare.api.zones import StationLoadOut, ZoneDetailOut, ZonesOut
from gridshare.controller.aggregate import LoadService

from .conftest import AUTH, ApiRig

ZONED = """
site: zoned
voltage: 230
zones:
  - {id: Z1, capacity_kw: 40}
  - {id: Z2}
groups:
  - id: main
    max_current: 63
    chargers: [z-1, z-2, z-3, free-1]
chargers:
  - {id: z-1, max_current: 16, phases: 3, failsafe_current: 0, zone: Z1}
  - {id: z-2, max_current: 16, phases: 3, failsafe_current: 0, zone: Z1}
  - {id: z-3, max_current: 16, phases: 3, failsafe_current: 0, zone: Z2}
  - {id: free-1, max_current: 16, phases: 3, failsafe_current: 0}
"""


async def _rig(tmp_path: Path, site: str, *, read_token: bool = False) -> ApiRig:
    rig = ApiRig("ocpp1.6", tmp_path / "var", site=site, read_token=read_token)
    app = rig.app
    # Short windows so that closed ones show up within seconds (the default is 60 s).
    app.loads = LoadService(app.topology, app.bus, app.clock, window_s=4, grace_s=0.5,
                            tick_s=0.2)
    await rig.start()
    return rig


@pytest.fixture
async def zoned(tmp_path: Path) -> AsyncIterator[ApiRig]:
    rig = await _rig(tmp_path, ZONED)
    try:
        yield rig
    finally:
        await rig.stop()


async def _get(rig: ApiRig, path: str, **kw: Any) -> Any:
    r = await rig.client.get(path, **kw)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return r.json()


async def test_zones_live_totals_and_closed_windows_from_the_meter_values(
        zoned: ApiRig) -> None:
    zoned.plug("z-1", 16.0)
    zoned.plug("z-3", 10.0)
    loads = zoned.app.loads
    await eventually(lambda: loads.zone_kw("Z1") > 5 and loads.zone_kw("Z2") > 3, 15)
    body = await _get(zoned, "/api/v1/zones")
    ZonesOut.model_validate(body)
    z1, z2 = body["zones"]
    assert (z1["id"], z1["capacity_kw"], z1["stations"]) == ("Z1", 40, ["z-1", "z-2"])
    assert z2["capacity_kw"] is None and z2["live"]["utilisation_pct"] is None
    live = z1["live"]
    assert live["active_stations"] == 1 and live["active_sessions"] == 1
    assert live["total_kw"] > 5
    assert live["utilisation_pct"] == pytest.approx(100 * live["total_kw"] / 40, abs=0.01)
    # Windows close every 4 s: wait for one in which z-1 charged throughout.
    await eventually(lambda: any(w.avg_kw > 5 and w.samples > 0
                                 for w in loads.stations["z-1"].history()), 20)
    body = await _get(zoned, "/api/v1/zones")
    last = body["zones"][0]["last_window"]
    assert last is not None and last["closed"] and last["stations"] == 2

    detail = await _get(zoned, "/api/v1/zones/Z1")
    ZoneDetailOut.model_validate(detail)
    by_id = {s["id"]: s for s in detail["station_loads"]}
    assert set(by_id) == {"z-1", "z-2"}
    assert by_id["z-1"]["now"]["kw"] > 5 and by_id["z-2"]["now"]["kw"] == 0
    assert by_id["z-1"]["current"]["closed"] is False

    load = await _get(zoned, "/api/v1/stations/z-1/load", params={"windows": 2})
    StationLoadOut.model_validate(load)
    assert load["station"] == "z-1" and load["zone"] == "Z1" and load["window_s"] == 4
    assert 1 <= len(load["windows"]) <= 2 and all(w["closed"] for w in load["windows"])
    assert load["current"] is not None and load["current"]["closed"] is False
    (conn,) = load["now"]["connectors"]
    assert conn["connector"] == 1 and conn["kw"] > 5
    # A station in no zone aggregates too.
    free = await _get(zoned, "/api/v1/stations/free-1/load")
    assert free["zone"] is None and free["now"]["kw"] == 0


@pytest.mark.parametrize("path, kind", [
    ("/api/v1/zones/Z9", "unknown-zone"),
    ("/api/v1/stations/nope/load", "unknown-station"),
])
async def test_unknown_ids_are_404_problems(zoned: ApiRig, path: str, kind: str) -> None:
    r = await zoned.client.get(path)
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM_JSON
    problem = r.json()
    assert problem["type"] == f"urn:gridshare:problem:{kind}"
    assert "nope" in problem["detail"] or "Z9" in problem["detail"]


async def test_bad_window_count_is_a_422(zoned: ApiRig) -> None:
    r = await zoned.client.get("/api/v1/stations/z-1/load", params={"windows": -1})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM_JSON
    assert r.json()["errors"][0]["loc"] == ["query", "windows"]


async def test_the_openapi_document_describes_the_routes(zoned: ApiRig) -> None:
    doc = await _get(zoned, "/openapi.json")
    validate(doc)
    for path in ("/api/v1/zones", "/api/v1/zones/{zone_id}",
                 "/api/v1/stations/{station_id}/load"):
        assert "404" in doc["paths"][path]["get"]["responses"] or path == "/api/v1/zones"
    schemas = doc["components"]["schemas"]
    assert {"ZonesOut", "ZoneDetailOut", "StationLoadOut", "StationWindowOut"} <= set(schemas)


async def test_a_site_without_zones_lists_none_and_still_aggregates(
        tmp_path: Path) -> None:
    rig = ApiRig("ocpp1.6", tmp_path / "var")  # the e2e site: no zones
    await rig.start()
    try:
        assert (await _get(rig, "/api/v1/zones")) == {"zones": []}
        r = await rig.client.get("/api/v1/zones/Z1")
        assert r.status_code == 404 and "zones: none" in r.json()["detail"]
        rig.plug("e-1", 16.0)
        await eventually(lambda: rig.app.loads.station_now("e-1").kw > 5, 15)
        load = await _get(rig, "/api/v1/stations/e-1/load")
        assert load["zone"] is None and load["now"]["kw"] > 5
    finally:
        await rig.stop()


async def test_reads_need_the_token_when_the_site_says_so(tmp_path: Path) -> None:
    rig = await _rig(tmp_path, ZONED, read_token=True)
    try:
        for path in ("/api/v1/zones", "/api/v1/zones/Z1", "/api/v1/stations/z-1/load"):
            r = await rig.client.get(path)
            assert r.status_code == 401 and r.headers["content-type"] == PROBLEM_JSON
            assert (await rig.client.get(path, headers=AUTH)).status_code == 200
    finally:
        await rig.stop()
