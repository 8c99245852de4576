"""Chargers not declared yet, through the API, against the running app and simulated
chargers: an unknown charger is listed pending, ``POST /api/v1/chargers`` writes it into the
site file (validated, a backup kept, comments kept) and the running site takes it without a
restart; every refusal leaves the file and the site as they were."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from waits import eventually

from gridshare.adapters.ocpp.config import CsmsConfig
from gridshare.api import schemas
from gridshare.app import build_app
from gridshare.config import load_site_config, parse_site
from gridshare.sim import SimCharger

from .conftest import AUTH, ApiRig
from .test_api import assert_problem

SITE_FILE = """\
# The e2e car park, as an operator writes it.
site: e2e
voltage: 230
ocpp: {pending_unknown: true}   # new chargers wait for us
groups:
  - id: service
    max_current: 40
    groups:
      - {id: left, max_current: 25, chargers: [e-1, e-2, e-3]}   # west wall
      - {id: right, max_current: 25, chargers: [e-4, e-5, e-6]}
      - {id: shed, max_current: 16, phases: 1}
chargers:
  - {id: e-1, max_current: 32, phases: 3, failsafe_current: 0}
  - {id: e-2, max_current: 32, phases: 3, failsafe_current: 0}
  - {id: e-3, max_current: 16, phases: 1, phase: L2, failsafe_current: 0}
  # right side
  - {id: e-4, max_current: 32, phases: 3, failsafe_current: 0}
  - {id: e-5, max_current: 32, phases: 3, failsafe_current: 6}
  - {id: e-6, max_current: 16, phases: 1, phase: L3, failsafe_current: 0}
"""

NEW = {"id": "new-1", "max_current": 32, "phases": 3, "failsafe_current": 0,
       "group": "left"}


class AdoptRig(ApiRig):
    """The API rig run from a site file on disk, unknown chargers held pending."""

    def __init__(self, protocol: str, tmp: Path, *, site_path: bool = True) -> None:
        self.path = tmp / "site.yaml"
        self.path.write_text(SITE_FILE, encoding="utf-8")
        super().__init__(protocol, tmp / "var", site=SITE_FILE)
        config = load_site_config(self.path)
        assert config.ocpp.pending_unknown
        # a Pending retry far beyond the test: an adopted charger boots again because the
        # CSMS asks it to (TriggerMessage), not because its interval ran out
        csms = CsmsConfig(pending_unknown=True, pending_retry_s=3600)
        self.app = build_app(self.topology, dataclasses.replace(
            self.app.options, csms=csms, site_path=self.path if site_path else None))

    async def connect_unknown(self, cid: str = "new-1", **kw: Any) -> SimCharger:
        sim = self.sim.add_charger(SimCharger(
            cid, f"ws://127.0.0.1:{self.app.ocpp_port}", protocol=self.protocol,
            phases=3, max_current_a=32.0, meter_interval_s=2.0, reconnect_min_s=0.2,
            reconnect_max_s=0.5, **kw))
        await sim.start(physics=False)
        await eventually(lambda: any(p.id == cid and p.boots > 0
                                     for p in self.app.csms.pending_chargers()))
        return sim


@pytest.fixture
async def adopt_rig(tmp_path: Path) -> AsyncIterator[AdoptRig]:
    r = AdoptRig("ocpp1.6", tmp_path)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.bak-*"))


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_unknown_charger_pending_then_adopted_and_controlled_without_restart(
        tmp_path: Path, protocol: str) -> None:
    rig = AdoptRig(protocol, tmp_path)
    await rig.start()
    try:
        c = rig.client
        rig.plug("e-1")
        rig.plug("e-2")
        await rig.settle()
        sim = await rig.connect_unknown()
        # pending: listed with vendor, model and protocol; never controlled, never counted
        body = (await c.get("/api/v1/pending")).json()
        schemas.PendingChargers.model_validate(body)
        (pending,) = body["pending"]
        assert (pending["id"], pending["registration"], pending["protocol"],
                pending["connected"]) == ("new-1", "pending", protocol, True)
        assert pending["vendor"] and pending["model"]
        listed = (await c.get("/api/v1/chargers", params={"registration": "pending"})).json()
        assert [x["id"] for x in listed["chargers"]] == ["new-1"]
        everything = (await c.get("/api/v1/chargers", params={"registration": "all"})).json()
        schemas.Chargers.model_validate(everything)
        assert [x["id"] for x in everything["chargers"]][-1] == "new-1"
        default = (await c.get("/api/v1/chargers")).json()
        assert "new-1" not in [x["id"] for x in default["chargers"]]
        assert not sim.connected and not sim.profiles
        metrics = (await c.get("/metrics")).text
        assert "\ngridshare_chargers_pending 1.0\n" in metrics
        assert "new-1" not in rig.app.controller.topology.chargers

        r = await c.post("/api/v1/chargers", json=NEW, headers=AUTH)
        assert r.status_code == 201, r.text
        view = r.json()
        schemas.Charger.model_validate(view)
        assert (view["id"], view["group"], view["max_current"]) == ("new-1", "left", 32.0)
        assert r.headers["location"] == "/api/v1/chargers/new-1"
        # the file: the charger written in the operator's own layout, comments kept
        text = rig.path.read_text()
        assert "# The e2e car park, as an operator writes it." in text
        assert "# right side" in text and "# west wall" in text
        assert "chargers: [e-1, e-2, e-3, new-1]}   # west wall" in text
        # nothing else changed, not even a space
        assert text == SITE_FILE.replace("e-3]}", "e-3, new-1]}") + \
            "  - {id: new-1, max_current: 32, phases: 3, failsafe_current: 0}\n"
        assert "  - {id: new-1, max_current: 32, phases: 3, failsafe_current: 0}\n" in text
        (backup,) = backups(rig.path)
        assert backup.read_text() == SITE_FILE
        assert "new-1" in load_site_config(rig.path).topology.chargers
        assert (await c.get("/api/v1/pending")).json()["pending"] == []

        # the running site took it: the charger boots Accepted, gets a car and a TxProfile
        # within the left group's share, and the other chargers kept their sessions
        rig.monitor.topology = rig.topology = rig.app.topology
        await eventually(lambda: sim.connected)
        rig.plug("new-1")
        await rig.settle()
        share = rig.app.controller.allocation
        assert share is not None
        got = share.setpoints[("new-1", 1)]
        assert 0 < got <= 25 / 3 + 0.1
        assert sim.offered_a(1) == pytest.approx(got, abs=0.05)
        assert any(p.transaction_id for p in sim.profiles)
        assert rig.sim.chargers["e-1"].transaction(1) is not None
        assert sum(rig.offered(x) for x in ("e-1", "e-2", "new-1")) <= 25 + 0.1
        assert rig.monitor.violations == [], rig.monitor.first_violation
        got_view = (await c.get("/api/v1/chargers/new-1")).json()
        assert got_view["connection"]["online"] is True
        load = await c.get("/api/v1/stations/new-1/load")  # aggregated like the others
        assert load.status_code == 200, load.text
    finally:
        await rig.stop()


async def test_adopting_ahead_and_every_refusal(adopt_rig: AdoptRig) -> None:
    rig, c = adopt_rig, adopt_rig.client
    path = rig.path

    async def refused(body: Any, status: int, in_detail: str = "",
                      headers: dict[str, str] | None = None) -> dict[str, Any]:
        r = await c.post("/api/v1/chargers", json=body,
                         headers=AUTH if headers is None else headers)
        problem = assert_problem(r, status, in_detail=in_detail)
        assert path.read_text() == SITE_FILE and backups(path) == []
        assert "x-9" not in rig.app.topology.chargers
        return problem

    await refused(NEW, 401, headers={})
    await refused(NEW, 401, headers={"Authorization": "Bearer wrong"})
    await refused({**NEW, "group": "nope"}, 404, "unknown group 'nope'")
    await refused({**NEW, "id": "e-1"}, 409, "already declared")
    await refused({**NEW, "max_current": -3}, 422)
    await refused({**NEW, "colour": "red"}, 422, "Extra inputs")
    await refused({**NEW, "phases": 1}, 422)  # 1-phase needs its line
    problem = await refused({**NEW, "id": "x-9", "group": "shed"}, 422,
                            "3-phase charger 'x-9' in 1-phase group 'shed'")
    assert problem["type"].endswith("invalid-site")
    assert any(str(path) in e["msg"] for e in problem["errors"])
    # the file changed on disk since start: applying it live would run something else
    changed = SITE_FILE.replace("max_current: 40", "max_current: 45")
    path.write_text(changed)
    r = await c.post("/api/v1/chargers", json={**NEW, "id": "x-9"}, headers=AUTH)
    assert_problem(r, 409, in_detail="restart gridshare")
    assert path.read_text() == changed and backups(path) == []
    path.write_text(SITE_FILE)

    # declared ahead: never seen, it waits offline, counted at its failsafe
    r = await c.post("/api/v1/chargers", headers=AUTH, json={
        "id": "x-9", "group": "shed", "max_current": 16, "phases": 1, "phase": "L1",
        "failsafe_current": 6, "connectors": [{"type": "Type2"}]})
    assert r.status_code == 201, r.text
    assert r.json()["connection"]["online"] is False
    config = load_site_config(path)
    x9 = config.topology.chargers["x-9"]
    assert (x9.group, x9.phases, x9.failsafe_current) == ("shed", 1, 6.0)
    assert len(backups(path)) == 1
    assert "x-9" in [x["id"] for x in (await c.get("/api/v1/chargers")).json()["chargers"]]
    shed = rig.app.controller.allocation
    await eventually(lambda: rig.app.controller.allocation is not shed)
    allocation = rig.app.controller.allocation
    assert allocation is not None and ("x-9", 1) in allocation.offline
    again = await c.post("/api/v1/chargers", json={**NEW, "id": "x-9"}, headers=AUTH)
    assert_problem(again, 409, in_detail="already declared")
    assert len(backups(path)) == 1


async def test_no_site_file_to_write(tmp_path: Path) -> None:
    """``gridshare demo`` (and any site not run from the operator's file) never writes
    into the installed package: adoption is refused with the reason."""
    rig = AdoptRig("ocpp1.6", tmp_path, site_path=False)
    await rig.start()
    try:
        r = await rig.client.post("/api/v1/chargers", json=NEW, headers=AUTH)
        assert_problem(r, 409, in_detail="not started from a site file")
        assert "new-1" not in rig.app.topology.chargers
    finally:
        await rig.stop()


def test_read_only_site_file_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gridshare import sitefile

    path = tmp_path / "site.yaml"
    path.write_text(SITE_FILE)
    assert sitefile.writable_reason(path) is None
    monkeypatch.setattr(sitefile.os, "access", lambda *_a, **_k: False)
    reason = sitefile.writable_reason(path)
    assert reason is not None and "not writable" in reason
    with pytest.raises(sitefile.SiteFileError, match="not writable"):
        sitefile.prepare(path, {"id": "n"}, "left")
    assert sitefile.writable_reason(tmp_path / "gone.yaml") is not None
    shipped = sitefile.PACKAGE_DIR / "examples" / "demo-site.yaml"
    assert "shipped inside gridshare" in (sitefile.writable_reason(shipped) or "")


@pytest.mark.parametrize("layout", ["inserted", "round-trip"])
def test_layouts_the_insertion_handles_and_the_round_trip_for_the_others(
        layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every layout gives the same document; the textual insertion changes nothing but
    what it adds, and where it cannot (or its proof fails) ruamel.yaml does it."""
    from gridshare import sitefile

    if layout == "round-trip":
        monkeypatch.setattr(sitefile, "_inserted", lambda text, *_: text + "# wrong\n")
    cases = [  # (site, group, how the group's list reads after)
        ("site: s\ngroups: [{id: g, max_current: 10}]\n", "g", "[n]"),
        ("site: s\ngroups:\n- id: g\n  max_current: 10\n  groups:\n  - id: h  # inner\n"
         "    max_current: 5\nchargers: []\n", "h", "[n]"),
        ("site: s\ngroups:\n  - id: g\n    chargers:\n      - a   # first\n"
         "chargers:\n  # the first one\n  - id: a\n    max_current: 16\n", "g", "[a, n]"),
        ("site: s\ngroups:\n  - &g {id: g, max_current: 10, chargers: [a]}\n"
         "chargers:\n  - {id: a, max_current: 3}\n", "g", "[a, n]"),
        ("site: s\ngroups:\n  - groups: [{id: h, max_current: 4}]\n    id: g\n"
         "    max_current: 9\n", "g", "[n]"),  # not inserted: the round trip does it
    ]
    for site, group, ids in cases:
        spec = {"id": "n", "max_current": 16, "connectors": [{"type": "Type2"}]}
        text = sitefile.with_charger(site, spec, group)
        for line in site.splitlines():
            if "#" in line:
                assert line.split("#")[1] in text  # comments kept
        data = sitefile.pyyaml.safe_load(text)
        assert data["chargers"][-1] == spec
        assert sitefile.pyyaml.safe_load(site).get("site") == data["site"]
        found = [g for g in sitefile._groups(data["groups"]) if g["id"] == group]
        assert sitefile._flow_text(found[0]["chargers"]) == ids
        if layout == "inserted" and site is not cases[-1][0]:
            assert sitefile._inserted(site, spec, group) == text


def test_written_site_reads_back_as_check_reads_it() -> None:
    from gridshare.sitefile import with_charger

    text = with_charger(SITE_FILE, {"id": "n-2", "max_current": 16, "connectors": [
        {"type": "Type2", "max_current": 16}, {"type": "CCS"}]}, "right")
    topo = parse_site(text)
    assert [c.type.value if c.type else None for c in topo.chargers["n-2"].connectors] == \
        ["Type2", "CCS"]
    assert topo.groups["right"].chargers[-1] == "n-2"


async def test_gridshare_serve_adopts_into_its_own_site_file(tmp_path: Path) -> None:
    """The command line wires it: ``ocpp: {pending_unknown: true}`` from the file, and
    ``POST /api/v1/chargers`` writes the very file ``gridshare serve`` was given."""
    import asyncio
    import os
    import re
    import signal
    import sys

    import httpx

    site = tmp_path / "site.yaml"
    site.write_text("site: serve-adopt\nocpp: {pending_unknown: true}\ngroups:\n"
                    "  - id: main   # the garage fuse\n    max_current: 32\n"
                    "    chargers: [s-1]\nchargers:\n  - {id: s-1, max_current: 16}\n")
    env = {**os.environ, "GRIDSHARE_API_TOKEN": "serve-adopt-token"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridshare", "serve", str(site), "--host", "127.0.0.1",
        "--ocpp-port", "0", "--api-port", "0", "--db", "none", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        ports = re.search(r"OCPP ws://127\.0\.0\.1:(\d+), .*status http://127\.0\.0\.1:(\d+)/",
                          line)
        assert ports, line
        charger = SimCharger("s-2", f"ws://127.0.0.1:{ports[1]}", protocol="ocpp2.0.1",
                             max_current_a=16.0)
        await charger.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[2]}") as http:
                async def pending() -> list[dict[str, Any]]:
                    return list((await http.get("/api/v1/pending")).json()["pending"])

                for _ in range(200):
                    if await pending():
                        break
                    await asyncio.sleep(0.05)
                assert [p["id"] for p in await pending()] == ["s-2"]
                r = await http.post("/api/v1/chargers", json={
                    "id": "s-2", "group": "main", "max_current": 16},
                    headers={"Authorization": "Bearer serve-adopt-token"})
                assert r.status_code == 201, r.text
                assert await charger.wait_connected(10.0)
        finally:
            await charger.stop()
        text = site.read_text()
        assert "  - id: main   # the garage fuse\n" in text
        assert "    chargers: [s-1, s-2]\n" in text and "  - {id: s-2, max_current: 16}\n" in text
        assert len(backups(site)) == 1
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, errors = await proc.communicate()
        assert proc.returncode == 0, errors.decode()
        assert b"operator: charger s-2 adopted into group main" in errors
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
