"""Chargers that are not declared yet (``pending_unknown``): answered Pending at boot, never
sent a profile or a command, none of their events published, remembered for the operator;
declared, they are asked to boot again and accepted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from csms_helpers import (
    Client16,
    Client201,
    CsmsFactory,
    Msgs,
    charger,
    eventually,
    exchange,
    raw_socket,
)
from ocpp.routing import on
from ocpp.v16 import call_result as result16
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.headers import build_authorization_basic

from gridshare.adapters.ocpp import (
    CentralSystem,
    ChargerCredentials,
    CsmsConfig,
    TlsConfig,
    hash_password,
)
from gridshare.adapters.ocpp.certs import make_ca, make_cert
from gridshare.drivers import CommandResult
from gridshare.events import ChargerBooted, ChargerOnline

PASSWORD = "correct-horse-battery-staple"


class Triggered16(Client16):
    @on("TriggerMessage")
    async def on_trigger(self, requested_message: str, **_: Any) -> Any:
        return result16.TriggerMessage(status="Accepted")


class Triggered201(Client201):
    @on("TriggerMessage")
    async def on_trigger(self, requested_message: str, **_: Any) -> Any:
        return result201.TriggerMessage(status="Accepted")


@contextlib.asynccontextmanager
async def triggered_charger(csms: CentralSystem, cid: str, version: str) -> AsyncIterator[Any]:
    """A client ChargePoint that accepts TriggerMessage (the helpers' do not)."""
    async with connect(f"ws://127.0.0.1:{csms.port}/{cid}", subprotocols=[version],
                       open_timeout=5) as ws:
        cp = (Triggered16 if version == "ocpp1.6" else Triggered201)(cid, ws)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def csms_calls(frames: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every CALL the CSMS sent: (action, payload)."""
    return [(m[2], m[3]) for m in map(json.loads, frames) if m[0] == 2]


async def refused_status(url: str, version: str = "ocpp1.6", **kw: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, subprotocols=[version], open_timeout=5, **kw):
            pass
    return info.value.response.status_code


async def test_unknown_charger_is_pending_then_declared_and_accepted(
        make_csms: CsmsFactory, version: str, msgs: Msgs) -> None:
    csms, events = await make_csms(allow_auto_register=False, pending_unknown=True,
                                   pending_retry_s=7, chargers={"KNOWN": ChargerCredentials()})
    async with triggered_charger(csms, "NEW-1", version) as cp:
        answer = await cp.call(msgs.boot(vendor="Acme", model="Wally"))
        assert (answer.status, answer.interval) == ("Pending", 7)
        await cp.call(msgs.status(1, "Available"))
        await cp.call(msgs.heartbeat())
        # never controlled: the driver refuses, nothing goes on the wire
        outcome = await csms.apply_setpoint("NEW-1", 1, 16.0)
        assert (outcome.result, outcome.sent) == (CommandResult.REJECTED, False)
        assert (await csms.apply_failsafe("NEW-1", 6.0)).result is CommandResult.REJECTED
        assert await csms.get_composite_schedule("NEW-1", 1, 60) is None
        assert csms_calls(cp.frames) == []
        assert [e for e in events.events if getattr(e, "charger", None) == "NEW-1"] == []
        (seen,) = csms.pending_chargers()
        assert (seen.id, seen.vendor, seen.model, seen.protocol, seen.connected, seen.boots) \
            == ("NEW-1", "Acme", "Wally", version, True, 1)
        assert seen.remote.startswith("127.0.0.1:")
        assert seen.as_json()["registration"] == "pending"

        assert csms.declare("NEW-1", phases=1) == "triggered"
        await eventually(lambda: [a for a, _ in csms_calls(cp.frames)] == ["TriggerMessage"])
        assert csms_calls(cp.frames)[0][1] == {"requestedMessage": "BootNotification"}
        await eventually(lambda: csms.metrics.summary(1)["calls_sent"] == 1
                         and csms.metrics.summary(1)["calls_failed"] == 0)
        answer = await cp.call(msgs.boot(vendor="Acme", model="Wally"))
        assert answer.status == "Accepted"
        booted = await events.wait_kind(ChargerBooted, "NEW-1")
        assert (booted[0].vendor, booted[0].model) == ("Acme", "Wally")
        assert csms.pending_chargers() == []
        assert csms.config.phases["NEW-1"] == 1
        outcome = await csms.apply_setpoint("NEW-1", 1, 10.0)
        assert outcome.result is CommandResult.ACCEPTED
    assert events.of(ChargerOnline, "NEW-1") == []  # only its boot said it is here


async def test_pending_charger_is_remembered_after_it_leaves(make_csms: CsmsFactory) -> None:
    csms, _ = await make_csms(allow_auto_register=False, pending_unknown=True)
    async with raw_socket(csms, "NEW-2", "ocpp2.0.1") as ws:
        reply = await exchange(ws, json.dumps([2, "b1", "BootNotification", {
            "chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"}]))
        assert reply[0] == 3 and reply[2]["status"] == "Pending"
        assert reply[2]["interval"] == csms.config.heartbeat_interval_s
    await eventually(lambda: not csms.pending_chargers()[0].connected)
    (gone,) = csms.pending_chargers()
    assert (gone.id, gone.vendor, gone.protocol) == ("NEW-2", "V", "ocpp2.0.1")
    assert gone.first_seen <= gone.last_seen


async def test_without_the_option_unknown_ids_stay_refused(make_csms: CsmsFactory) -> None:
    csms, _ = await make_csms(allow_auto_register=False, chargers={"KNOWN": ChargerCredentials()})
    assert await refused_status(f"ws://127.0.0.1:{csms.port}/STRANGER") == 404
    assert csms.pending_chargers() == []


async def test_pending_list_is_bounded(make_csms: CsmsFactory) -> None:
    csms, _ = await make_csms(allow_auto_register=False, pending_unknown=True, pending_max=1)
    async with charger(csms, "NEW-A", "ocpp1.6") as cp:
        await cp.call(Msgs("ocpp1.6").heartbeat())
        assert await refused_status(f"ws://127.0.0.1:{csms.port}/NEW-B") == 404
        assert csms.counters.rejected["pending_full"] == 1
    await eventually(lambda: not csms.pending_chargers()[0].connected)
    async with charger(csms, "NEW-B", "ocpp1.6") as cp:  # the disconnected one makes room
        await cp.call(Msgs("ocpp1.6").heartbeat())
        assert [p.id for p in csms.pending_chargers()] == ["NEW-B"]


async def test_basic_auth_unknown_is_pending_and_must_reconnect_once_declared(
        make_csms: CsmsFactory) -> None:
    """Profile 1: an unknown id has no password to check. It is held pending whatever
    password it sends (it is never trusted with anything); declaring it closes that
    connection, and only the declared password gets it back in."""
    csms, events = await make_csms(security_profile=1, allow_auto_register=False,
                                   pending_unknown=True)
    url = f"ws://127.0.0.1:{csms.port}/NEW-P"
    assert await refused_status(url) == 401  # still needs basic auth at all
    assert await refused_status(url, additional_headers={
        "Authorization": build_authorization_basic("SOMEONE-ELSE", PASSWORD)}) == 401
    anything = {"Authorization": build_authorization_basic("NEW-P", "whatever-it-likes")}
    async with charger(csms, "NEW-P", "ocpp1.6", additional_headers=anything) as cp:
        answer = await cp.call(Msgs("ocpp1.6").boot())
        assert answer.status == "Pending"
        assert csms.declare("NEW-P", ChargerCredentials(hash_password(PASSWORD))) == "reconnect"
        await cp.ws.wait_closed()
    assert await refused_status(url, additional_headers=anything) == 401
    good = {"Authorization": build_authorization_basic("NEW-P", PASSWORD)}
    async with charger(csms, "NEW-P", "ocpp1.6", additional_headers=good) as cp:
        assert (await cp.call(Msgs("ocpp1.6").boot())).status == "Accepted"
    assert len(events.of(ChargerBooted, "NEW-P")) == 1


def test_pending_and_auto_register_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        CsmsConfig(pending_unknown=True, allow_auto_register=True)
    with pytest.raises(ValueError, match="pending_max"):
        CsmsConfig(pending_unknown=True, pending_max=0)


async def test_mutual_tls_unknown_needs_a_certificate_of_our_ca_naming_it(
        make_csms: CsmsFactory, tmp_path: Path) -> None:
    """Profile 3: only a client certificate signed by the site's CA, whose CN is the id in
    the URL, gets an unknown charger as far as Pending; declared, it is accepted on that
    same (authenticated) connection."""
    ca = make_ca(tmp_path / "ca", "site CA")
    server = make_cert(ca, "localhost", tmp_path / "server", server=True)
    mine = make_cert(ca, "NEW-3", tmp_path / "clients")
    foreign = make_cert(make_ca(tmp_path / "other", "not ours"), "NEW-3", tmp_path / "f")

    def context(cert: Any) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(ca.cert_path))
        ctx.load_cert_chain(str(cert.cert_path), str(cert.key_path))
        return ctx

    csms, events = await make_csms(
        security_profile=3, allow_auto_register=False, pending_unknown=True,
        tls=TlsConfig(server.cert_path, server.key_path, ca.cert_path))
    with pytest.raises((OSError, InvalidHandshake)):  # refused in the TLS layer
        async with connect(f"wss://127.0.0.1:{csms.port}/NEW-3", subprotocols=["ocpp1.6"],
                           open_timeout=5, ssl=context(foreign)) as ws:
            await ws.send('[2,"x","Heartbeat",{}]')
            await ws.recv()
    assert await refused_status(f"wss://127.0.0.1:{csms.port}/OTHER",
                                ssl=context(mine)) == 403
    assert csms.pending_chargers() == []
    async with charger(csms, "NEW-3", "ocpp1.6", ssl=context(mine)) as cp:
        assert (await cp.call(Msgs("ocpp1.6").boot())).status == "Pending"
        assert [p.id for p in csms.pending_chargers()] == ["NEW-3"]
        assert csms.declare("NEW-3") == "triggered"
        assert (await cp.call(Msgs("ocpp1.6").boot())).status == "Accepted"
    assert len(events.of(ChargerBooted, "NEW-3")) == 1


def test_site_file_option() -> None:
    from gridshare.app import csms_settings
    from gridshare.config import ConfigError, parse_site_config

    site = "site: s\ngroups: [{id: g, max_current: 16}]\nocpp: {%s}\n"
    assert not csms_settings(parse_site_config(site % "")).pending_unknown
    assert csms_settings(parse_site_config(site % "pending_unknown: true")).pending_unknown
    with pytest.raises(ConfigError, match="exclude each other"):
        parse_site_config(site % "pending_unknown: true, allow_auto_register: true")


async def test_a_connection_whose_password_was_never_checked_stays_pending() -> None:
    """Profile 1: declaring a charger closes its pending connection; whatever that
    connection says before it is gone (a boot, a status) is still answered as pending and
    never published: only a connection with the declared password is trusted."""
    from test_ocpp_session import NOW, Published, ScriptedSocket

    from gridshare.ocpp_version import OcppVersion

    socket = ScriptedSocket()
    published = Published(socket)
    csms = CentralSystem(CsmsConfig(security_profile=1, pending_unknown=True), published,
                         clock=lambda: NOW)
    session = csms.open_session(socket, "NEW-S", OcppVersion.V16)  # type: ignore[arg-type]
    assert session.pending
    assert csms.declare("NEW-S", ChargerCredentials(hash_password(PASSWORD))) == "reconnect"
    assert session.pending and session.closing
    socket.inbound.put_nowait(json.dumps([2, "b", "BootNotification", {
        "chargePointVendor": "V", "chargePointModel": "M"}]))
    socket.inbound.put_nowait(json.dumps([2, "s", "StatusNotification", {
        "connectorId": 1, "errorCode": "NoError", "status": "Charging"}]))
    socket.inbound.put_nowait(None)
    await session.run()
    boot = json.loads(next(f for f in socket.written if f.startswith('[3,"b"')))
    assert boot[2]["status"] == "Pending"
    assert list(published) == []
    assert csms.declared("NEW-S")
