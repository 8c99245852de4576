"""Every endpoint of the REST API over real HTTP against the running app and simulated
chargers: reads, the operator override (lowers the chargers' setpoints, removing it or its
``until`` restores them), the priority override, refused changes that leave everything
untouched, problem+json errors, and the served OpenAPI document."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from e2e.conftest import CAR_LAG_S
from openapi_spec_validator import validate
from waits import eventually

from gridshare.api import schemas
from gridshare.api.app import create_api
from gridshare.app import ServeOptions, build_app
from gridshare.config import parse_site

from .conftest import AUTH, TOKEN, ApiRig

LEFT = ("e-1", "e-2")


def walk(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    stack = list(groups)
    while stack:
        g = stack.pop()
        out[g["id"]] = g
        stack.extend(g["children"])
    return out


def assert_problem(response: httpx.Response, status: int, *, in_detail: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    assert in_detail in body["detail"], body
    if status == 422:
        assert body["errors"], body
    return body


async def test_reads(rig: ApiRig) -> None:
    c = rig.client
    rig.plug("e-1")
    await rig.settle()
    status = (await c.get("/status")).json()
    assert status["site"] == "e2e" and status["chargers_online"] == 6
    assert set(status) == set(rig.app.status())  # the same JSON the status server served
    head = await c.head("/status")
    assert head.status_code == 200 and head.content == b""

    site = (await c.get("/api/v1/site")).json()
    schemas.Site.model_validate(site)
    groups = walk(site["groups"])
    assert [g["id"] for g in site["groups"]] == ["service"]
    assert [g["id"] for g in groups["service"]["children"]] == ["left", "right"]
    left = groups["left"]
    assert left["chargers"] == ["e-1", "e-2", "e-3"] and left["limit"] == 25
    assert left["override"] is None
    assert left["limits"] == [{"source": "static", "max_current": 25.0, "max_power": None,
                               "until": None}]
    assert len(left["current"]) == 3 and left["available"] is not None

    chargers = (await c.get("/api/v1/chargers")).json()
    schemas.Chargers.model_validate(chargers)
    assert [ch["id"] for ch in chargers["chargers"]] == [f"e-{i}" for i in range(1, 7)]
    one = (await c.get("/api/v1/chargers/e-1")).json()
    schemas.Charger.model_validate(one)
    assert one["connection"]["online"] is True and one["protocol"] == "ocpp1.6"
    (conn,) = one["connectors"]
    assert conn["active"] is True
    assert conn["setpoint"] == pytest.approx(rig.offered("e-1"), abs=0.05)
    assert conn["lease_end"] is not None
    assert conn["session"]["transaction_id"] is not None
    assert one["status"] in ("Charging", "SuspendedEV", "SuspendedEVSE")
    assert one["priority"] == 0 and one["priority_override"] is None

    assert_problem(await c.get("/api/v1/chargers/nope"), 404, in_detail="unknown charger")
    assert_problem(await c.get("/api/v1/nothing-here"), 404)


async def test_history_sessions_commands_alarms(rig: ApiRig) -> None:
    c = rig.client
    start = datetime.now(UTC) - timedelta(seconds=1)
    rig.plug("e-1")
    await rig.settle()
    await eventually(lambda: rig.sim.chargers["e-1"].energy_wh(1) > 0)
    got = (await c.get("/api/v1/sessions", params={"charger": "e-1"})).json()
    schemas.Sessions.model_validate(got)
    (running,) = got["sessions"]
    assert running["stopped"] is None and running["charger"] == "e-1"
    rig.unplug("e-1")
    await eventually(lambda: rig.app.controller.state.transaction_of(("e-1", 1)) is None)
    got = (await c.get("/api/v1/sessions", params={
        "from": start.isoformat(), "to": datetime.now(UTC).isoformat()})).json()
    (done,) = got["sessions"]
    assert done["stopped"] is not None and done["energy_wh"] is not None
    assert done["energy_wh"] == pytest.approx(done["meter_stop_wh"] - done["meter_start_wh"])
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await c.get("/api/v1/sessions", params={"from": later})).json()["sessions"] == []
    assert_problem(await c.get("/api/v1/sessions", params={"from": "yesterday"}), 422)
    assert_problem(await c.get("/api/v1/sessions", params={"from": "2026-11-30T10:00:00"}),
                   422)  # no offset: ambiguous

    commands = (await c.get("/api/v1/commands", params={"charger": "e-1"})).json()
    schemas.Commands.model_validate(commands)
    assert commands["commands"] and {x["charger"] for x in commands["commands"]} == {"e-1"}
    assert any(x["kind"] != "failsafe" and x["result"] == "accepted"
               for x in commands["commands"])
    assert len((await c.get("/api/v1/commands", params={"limit": 2})).json()["commands"]) == 2
    assert_problem(await c.get("/api/v1/commands", params={"limit": 0}), 422)

    # An alarm: e-5 goes away (counted at its 6 A failsafe) and right is cut below it.
    since = datetime.now(UTC)
    await rig.sim.chargers["e-5"].stop()
    await eventually(lambda: not rig.app.controller.state.online("e-5"))
    r = await c.put("/api/v1/groups/right/limit", json={"max_current": 3}, headers=AUTH)
    assert r.status_code == 200, r.text
    await eventually(lambda: any(a.kind == "limit" for a in rig.app.controller.recent_alarms))
    alarms = (await c.get("/api/v1/alarms", params={"since": since.isoformat()})).json()
    schemas.Alarms.model_validate(alarms)
    assert any(a["kind"] == "limit" and a["group"] == "right" for a in alarms["alarms"])
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await c.get("/api/v1/alarms", params={"since": future})).json()["alarms"] == []


async def test_an_override_lowers_the_setpoints_and_removing_it_restores_them(
        rig: ApiRig) -> None:
    c = rig.client
    for cid in LEFT:
        rig.plug(cid)
    await rig.settle()
    before = sum(rig.offered(cid) for cid in LEFT)
    assert before == pytest.approx(25.0, abs=0.3)

    r = await c.put("/api/v1/groups/left/limit", json={"max_current": 10}, headers=AUTH)
    assert r.status_code == 200, r.text
    group = r.json()
    schemas.Group.model_validate(group)
    assert group["limit"] == 10 and group["override"] == {
        "max_current": 10.0, "max_power": None, "until": None}
    await eventually(lambda: sum(rig.offered(cid) for cid in LEFT) <= 10.0 + 0.05)
    await asyncio.sleep(CAR_LAG_S + 0.2)  # the cars follow
    rig.extra_limits["left"] = 10.0  # the monitor holds them to it from now on
    site = walk((await c.get("/api/v1/site")).json()["groups"])
    assert site["left"]["limit"] == 10
    assert [x["source"] for x in site["left"]["limits"]] == ["static", "operator"]
    (event,) = await rig.events("LimitChanged")  # in the audit log
    assert event["group"] == "left" and event["source"] == "operator"
    assert event["max_current"] == 10

    rig.extra_limits.pop("left")  # before: the chargers may be raised before we hear back
    r = await c.put("/api/v1/groups/left/limit",
                    json={"max_current": None, "max_power": None, "until": None}, headers=AUTH)
    assert r.status_code == 200 and r.json()["override"] is None and r.json()["limit"] == 25
    await eventually(lambda: sum(rig.offered(cid) for cid in LEFT) >= 25.0 - 0.3)
    assert len(await rig.events("LimitChanged")) == 2
    assert rig.monitor.violations == [], rig.monitor.first_violation


async def test_until_expires(rig: ApiRig) -> None:
    c = rig.client
    for cid in LEFT:
        rig.plug(cid)
    await rig.settle()
    until = datetime.now(UTC) + timedelta(seconds=2)
    r = await c.put("/api/v1/groups/left/limit",
                    json={"max_power": 4.6, "until": until.isoformat()}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["override"]["until"] == until.isoformat()
    assert r.json()["limit_power"] == 4.6
    # 4.6 kW at 230 V on three phases is 6.67 A per phase, shared by two cars.
    await eventually(lambda: sum(rig.offered(cid) for cid in LEFT) <= 6.7)
    await eventually(lambda: sum(rig.offered(cid) for cid in LEFT) >= 25.0 - 0.3,
                     timeout_s=15.0)
    assert datetime.now(UTC) >= until
    left = walk((await c.get("/api/v1/site")).json()["groups"])["left"]
    assert left["override"] is None and left["limit_power"] is None


BAD_LIMITS = [
    pytest.param({}, {"max_current": 10}, 401, "Authorization", id="no-token"),
    pytest.param({"Authorization": "Bearer wrong"}, {"max_current": 10}, 401, "not valid",
                 id="bad-token"),
    pytest.param({"Authorization": f"Basic {TOKEN}"}, {"max_current": 10}, 401, "",
                 id="not-bearer"),
    pytest.param(AUTH, {"max_current": -1}, 422, "greater than or equal to 0",
                 id="negative"),
    pytest.param(AUTH, {"max_power": -0.5}, 422, "greater than or equal", id="negative-kw"),
    pytest.param(AUTH, {"max_current": 10, "maximum": 3}, 422, "Extra inputs",
                 id="unknown-field"),
    pytest.param(AUTH, {"max_current": "lots"}, 422, "number", id="not-a-number"),
    pytest.param(AUTH, {"max_current": 10, "until": "2020-01-01T00:00:00Z"}, 422,
                 "not in the future", id="until-past"),
    pytest.param(AUTH, {"max_current": 10, "until": "2030-01-01T00:00:00"}, 422,
                 "timezone", id="until-naive"),
    pytest.param(AUTH, {"until": "2030-01-01T00:00:00Z"}, 422, "until given without",
                 id="until-alone"),
    pytest.param(AUTH, [10], 422, "", id="not-an-object"),
]


@pytest.mark.parametrize(("headers", "body", "status", "detail"), BAD_LIMITS)
async def test_refused_limit_changes_leave_state_untouched(
        rig: ApiRig, headers: dict[str, str], body: Any, status: int, detail: str) -> None:
    rig.plug("e-1")
    await rig.settle()
    offered = rig.offered("e-1")
    site_before = walk((await rig.client.get("/api/v1/site")).json()["groups"])
    r = await rig.client.put("/api/v1/groups/left/limit", json=body, headers=headers)
    problem = assert_problem(r, status, in_detail=detail)
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    if status == 422:
        assert problem["type"] == "urn:gridshare:problem:validation-error"
    await rig.app.controller.settle()
    state = rig.app.controller.state
    assert state.limits_of("left", rig.app.clock.now()) == {}
    site_after = walk((await rig.client.get("/api/v1/site")).json()["groups"])
    assert site_after["left"]["limit"] == site_before["left"]["limit"] == 25
    assert site_after["left"]["override"] is None
    assert rig.offered("e-1") == offered
    assert await rig.events("LimitChanged") == []


async def test_refused_requests_of_every_kind(rig: ApiRig) -> None:
    c = rig.client
    state = rig.app.controller.state
    # Unknown ids, with a good token and a good body.
    assert_problem(await c.put("/api/v1/groups/nope/limit", json={"max_current": 1},
                               headers=AUTH), 404, in_detail="unknown group 'nope'")
    assert_problem(await c.put("/api/v1/chargers/nope/priority", json={"priority": 1},
                               headers=AUTH), 404, in_detail="unknown charger 'nope'")
    # Not JSON: without a token the token is what is missing, with one the body.
    raw = {"content-type": "application/json"}
    assert_problem(await c.put("/api/v1/groups/left/limit", content=b"{", headers=raw), 401)
    assert_problem(await c.put("/api/v1/groups/left/limit", content=b"{",
                               headers={**raw, **AUTH}), 422)
    for body in ({"priority": 1.5}, {"priority": "1"}, {}, {"priority": 1, "x": 2},
                 {"priority": 10**9}):
        assert_problem(await c.put("/api/v1/chargers/e-1/priority", json=body,
                                   headers=AUTH), 422)
    assert_problem(await c.put("/api/v1/chargers/e-1/priority", json={"priority": 3}), 401)
    assert_problem(await c.delete("/api/v1/groups/left/limit", headers=AUTH), 405)
    assert state.priority_override("e-1") is None
    assert state.limits_of("left", rig.app.clock.now()) == {}
    assert await rig.events("LimitChanged") == []
    assert await rig.events("PriorityChanged") == []


PRIORITY_SITE = """
site: prio
voltage: 230
policy: priority
groups:
  - {id: main, max_current: 10, chargers: [p-1, p-2]}
chargers:
  - {id: p-1, max_current: 32, phases: 3, failsafe_current: 0, priority: 2}
  - {id: p-2, max_current: 32, phases: 3, failsafe_current: 0, priority: 1}
"""


async def test_a_priority_override_changes_who_is_served_first(tmp_path: Any) -> None:
    rig = ApiRig("ocpp2.0.1", tmp_path / "var", site=PRIORITY_SITE)
    await rig.start()
    try:
        rig.plug("p-1")
        rig.plug("p-2")
        await rig.settle()
        assert rig.offered("p-1") == pytest.approx(10.0, abs=0.1)  # priority 2 first
        assert rig.offered("p-2") == 0.0
        r = await rig.client.put("/api/v1/chargers/p-2/priority", json={"priority": 5},
                                 headers=AUTH)
        assert r.status_code == 200, r.text
        charger = r.json()
        schemas.Charger.model_validate(charger)
        assert charger["priority"] == 5 and charger["priority_override"] == 5
        await eventually(lambda: rig.offered("p-2") >= 9.9 and rig.offered("p-1") == 0.0)
        (event,) = await rig.events("PriorityChanged")
        assert event["charger"] == "p-2" and event["priority"] == 5
        r = await rig.client.put("/api/v1/chargers/p-2/priority", json={"priority": None},
                                 headers=AUTH)
        assert r.json()["priority"] == 1 and r.json()["priority_override"] is None
        await eventually(lambda: rig.offered("p-1") >= 9.9 and rig.offered("p-2") == 0.0)
        assert rig.monitor.violations == [], rig.monitor.first_violation
    finally:
        await rig.stop()


def _app(tokens: tuple[str, ...] = (), read_token: bool = False) -> Any:
    topology = parse_site(PRIORITY_SITE, "prio")
    app = build_app(topology, ServeOptions(api_port=None, db_url="none"))
    return app, create_api(app, tokens, read_token=read_token)


async def test_without_a_configured_token_every_change_is_refused() -> None:
    app, api = _app(tokens=())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(api),
                                 base_url="http://api") as c:
        for headers in ({}, {"Authorization": "Bearer anything"}):
            r = await c.put("/api/v1/groups/main/limit", json={"max_current": 5},
                            headers=headers)
            body = assert_problem(r, 403, in_detail="--api-token-file")
            assert "GRIDSHARE_API_TOKEN" in body["detail"]
        assert (await c.get("/api/v1/site")).status_code == 200  # reads stay open
    assert app.controller.state.limits_of("main", app.clock.now()) == {}


async def test_read_token_makes_reads_need_the_token() -> None:
    _, api = _app(tokens=("t1", "t2"), read_token=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(api),
                                 base_url="http://api") as c:
        for path in ("/status", "/api/v1/site", "/api/v1/chargers", "/api/v1/chargers/p-1",
                     "/api/v1/alarms", "/api/v1/stream"):
            assert_problem(await c.get(path), 401)
            assert_problem(await c.get(path, headers={"Authorization": "Bearer t3"}), 401)
        for token in ("t1", "t2"):
            r = await c.get("/api/v1/site", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
        assert (await c.get("/api/v1/site", params={"access_token": "t2"})).status_code == 200
        # The OpenAPI document and the docs stay open: they hold no site data.
        assert (await c.get("/openapi.json")).status_code == 200
        assert (await c.get("/docs")).status_code == 200
    _, api = _app(tokens=(), read_token=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(api),
                                 base_url="http://api") as c:
        assert_problem(await c.get("/api/v1/site"), 403, in_detail="--api-token-file")


async def test_the_openapi_document_validates_and_the_docs_are_offline() -> None:
    _, api = _app(tokens=("t",))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(api),
                                 base_url="http://api") as c:
        spec = (await c.get("/openapi.json")).json()
        validate(spec)
        paths = spec["paths"]
        for path, method in [("/status", "get"), ("/api/v1/site", "get"),
                             ("/api/v1/chargers", "get"), ("/api/v1/chargers/{charger_id}", "get"),
                             ("/api/v1/sessions", "get"), ("/api/v1/commands", "get"),
                             ("/api/v1/alarms", "get"), ("/api/v1/stream", "get"),
                             ("/api/v1/groups/{group_id}/limit", "put"),
                             ("/api/v1/chargers/{charger_id}/priority", "put")]:
            assert method in paths[path], path
        put = paths["/api/v1/groups/{group_id}/limit"]["put"]
        assert put["security"] and {"401", "404", "422"} <= set(put["responses"])
        assert "application/problem+json" in put["responses"]["422"]["content"]
        assert set(spec["components"]["schemas"]["LimitOverride"]["properties"]) == {
            "max_current", "max_power", "until"}
        html = (await c.get("/docs")).text
        assert "/docs-assets/swagger-ui-bundle.js" in html
        assert "cdn" not in html and "https://" not in html.replace(
            "https://fastapi.tiangolo.com", "")
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            r = await c.get(f"/docs-assets/{asset}")
            assert r.status_code == 200 and len(r.content) > 10_000


async def test_the_dashboard_is_served_at_the_root() -> None:
    from gridshare.api.app import STATIC_DIR

    _, api = _app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(api),
                                 base_url="http://api") as c:
        r = await c.get("/")
        assert r.status_code == 200
        assert r.text == (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        for name in sorted(p.name for p in STATIC_DIR.iterdir() if p.is_file()):
            got = await c.get(f"/static/{name}")
            assert got.status_code == 200 and got.content == (STATIC_DIR / name).read_bytes()
        assert_problem(await c.get("/static/nope.js"), 404)


def test_problem_bodies_are_json() -> None:
    from gridshare.api.problems import problem_response

    r = problem_response(404, "unknown group 'x'", kind="unknown-group")
    assert json.loads(r.body) == {"type": "urn:gridshare:problem:unknown-group",
                                  "title": "Not Found", "status": 404,
                                  "detail": "unknown group 'x'"}


async def test_the_cached_chargers_view_rebuilds_only_what_changed_and_stays_exact(
        rig: ApiRig) -> None:
    from gridshare.api.views import LiveViews, chargers_view

    assert rig.app.api_server is not None
    views = rig.app.api_server.api.state.views
    assert isinstance(views, LiveViews)
    views.full_every_s = 3600.0  # from the next build on, only what changed is rebuilt
    views.chargers()
    rig.plug("e-2")
    rig.plug("e-4")
    await rig.settle()
    await asyncio.sleep(1.5)  # settle windows end: time alone changes what is counted
    for plugged in (True, False, False):
        views.invalidate()
        got = json.loads(views.chargers())
        fresh = chargers_view(rig.app.controller)  # no await between: the same state
        assert got["chargers"] == json.loads(json.dumps(fresh["chargers"]))
        by_id = {c["id"]: c for c in got["chargers"]}
        assert by_id["e-2"]["connectors"][0]["active"] is plugged
        rig.unplug("e-2")
        await eventually(lambda: not rig.app.controller.state.active(("e-2", 1)))
        await asyncio.sleep(0.5)
