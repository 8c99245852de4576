"""Gateway and controller as separate processes over NATS: a charger that connects to the
gateway gets the controller's profile (events out through JetStream, the command back
over request/reply); in-process pieces: the command server and driver, the site lease."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from natsserver import NatsServer
from waits import eventually

from gridshare.adapters.nats.bus import NatsBus
from gridshare.adapters.nats.driver import CommandServer, NatsChargerDriver
from gridshare.adapters.nats.lease import SiteLease
from gridshare.drivers import CommandOutcome, CommandResult, SetpointRequest
from gridshare.sim import SimCharger

SITE = """
site: roles
groups:
  - id: main
    max_current: 32
    chargers: [r-1]
chargers:
  - {id: r-1, max_current: 16, phases: 3}
"""
GATEWAY_READY = re.compile(r"^gridshare ready: site roles, role gateway, OCPP "
                           r"ws://127\.0\.0\.1:(\d+), bus nats://127\.0\.0\.1:\d+, "
                           r"1 chargers configured$")


async def _serve(site: Path, nats: NatsServer, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridshare", "serve", str(site), "--bus", nats.url,
        "--host", "127.0.0.1", "--ocpp-port", "0", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        return (await proc.stdout.readline()).decode().strip()


async def _stop(procs: Sequence[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            async with asyncio.timeout(20):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_gateway_and_controller_processes(tmp_path: Path, nats: NatsServer) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    gateway = await _serve(site, nats, "--role", "gateway")
    ctl = await _serve(site, nats, "--role", "controller", "--controller-id", "c1",
                       "--db", f"sqlite:///{tmp_path / 'c.db'}")
    procs = [gateway, ctl]
    try:
        match = GATEWAY_READY.match(await _line(gateway))
        assert match
        assert (await _line(ctl)).startswith("gridshare standby: site roles, controller c1")
        assert (await _line(ctl)).startswith("gridshare ready: site roles, role controller c1")
        charger = SimCharger("r-1", f"ws://127.0.0.1:{match[1]}", protocol="ocpp2.0.1")
        await charger.start(physics=False)
        try:
            assert await charger.wait_connected(10.0)
            # ChargerBooted went gateway -> JetStream -> controller, whose failsafe profile
            # came back controller -> request/reply -> gateway -> OCPP -> charger.
            await eventually(lambda: bool(charger.profiles), timeout_s=30)
        finally:
            await charger.stop()
    finally:
        await _stop(procs)
    assert gateway.returncode == 0 and ctl.returncode == 0


class FakeCsms:
    """Answers like a CSMS would (the command path, without OCPP)."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def submit_setpoints(self, requests: Sequence[SetpointRequest],
                         ) -> list[asyncio.Future[CommandOutcome]]:
        raise AssertionError("the gateway runs commands one by one")

    async def apply_setpoint(self, charger: str, connector: int, current_a: float,
                             lease_s: float) -> CommandOutcome:
        self.calls.append(("setpoint", charger, connector, current_a, lease_s))
        if charger == "slow":
            await asyncio.sleep(10)
        return CommandOutcome(CommandResult.ACCEPTED, answer_seq=7)

    async def apply_failsafe(self, charger: str, current_a: float) -> CommandOutcome:
        self.calls.append(("failsafe", charger, current_a))
        return CommandOutcome(CommandResult.REJECTED, detail="no")

    async def apply_charger_cap(self, charger: str, current_a: float | None,
                                ) -> CommandOutcome:
        self.calls.append(("cap", charger, current_a))
        return CommandOutcome(CommandResult.ACCEPTED)


async def test_commands_over_request_reply(nats: NatsServer) -> None:
    bus = NatsBus(nats.url, site="s")
    driver = NatsChargerDriver(bus, timeout_s=2.0)
    # No gateway: nothing was sent.
    out = await driver.apply_setpoint("c", 1, 10.0, 60.0)
    assert out.result is CommandResult.OFFLINE and not out.sent and not out.unknown
    csms = FakeCsms()
    server = CommandServer(NatsBus(nats.url, site="s"), csms)
    await server.start()
    try:
        # The gateway's interest reaches the server with its flush; on a loaded machine a
        # request may still race it (answered "no responders": offline, safe). Probe first.
        for _ in range(50):
            if (await driver.apply_charger_cap("probe", 1.0)).result is CommandResult.ACCEPTED:
                break
            await asyncio.sleep(0.1)
        futures = driver.submit_setpoints([SetpointRequest("c", 1, 10.0, 60.0),
                                           SetpointRequest("slow", 2, 6.0, 60.0)])
        fast, slow = [await f for f in futures]
        assert fast.result is CommandResult.ACCEPTED and fast.answer_seq == 7
        assert slow.result is CommandResult.TIMEOUT and slow.unknown  # may have applied
        assert (await driver.apply_failsafe("c", 6.0)).result is CommandResult.REJECTED
        assert (await driver.apply_charger_cap("c", None)).result is CommandResult.ACCEPTED
        assert ("cap", "c", None) in csms.calls and ("failsafe", "c", 6.0) in csms.calls
        assert ("setpoint", "c", 1, 10.0, 60.0) in csms.calls
    finally:
        await server.stop()
        await server.bus.close()
        await bus.close()


async def test_lease_one_holder_then_takeover(nats: NatsServer) -> None:
    bus = NatsBus(nats.url, site="s")
    # TTL 3 s, renewed every second: generous for a loaded machine.
    a = SiteLease(bus, "s", "A", ttl_s=3.0)
    b = SiteLease(bus, "s", "B", ttl_s=3.0)
    assert await a.try_acquire()
    assert not await b.try_acquire()
    await asyncio.sleep(4.0)  # past the TTL: A renewed, so it still holds the site
    assert a.held and await b.holder() == "A" and not await b.try_acquire()
    a_again = SiteLease(bus, "s", "A", ttl_s=3.0)  # a restarted A waits like anyone
    assert not await a_again.try_acquire()
    assert a._renewer is not None
    a._renewer.cancel()  # A dies: no more renewals
    waiting = asyncio.ensure_future(b.acquire())
    await asyncio.wait_for(waiting, 15)
    assert b.held and await b.holder() == "B"
    await b.release()  # a clean stop hands over at once
    assert await a_again.try_acquire()
    await a_again.release()
    await bus.close()


async def test_one_process_over_nats(nats: NatsServer) -> None:
    """``--role all --bus nats://``: the single-process app works over JetStream too."""
    from gridshare.app import ServeOptions, build_app
    from gridshare.config import parse_site

    topology = parse_site(SITE)
    app = build_app(topology, ServeOptions(host="127.0.0.1", ocpp_port=0, api_port=None,
                                           db_url="none", bus_url=nats.url))
    await app.start()
    try:
        assert isinstance(app.bus, NatsBus)
        charger = SimCharger("r-1", app.ocpp_url, protocol="ocpp1.6")
        await charger.start(physics=False)
        try:
            assert await charger.wait_connected(10.0)
            await eventually(lambda: bool(charger.profiles), timeout_s=30)
            assert app.controller.counters["events"] >= 1
        finally:
            await charger.stop()
    finally:
        await app.stop()


async def test_takeover_rebuilds_state_from_acknowledged_events(tmp_path: Path,
                                                                nats: NatsServer) -> None:
    """B takes over after A: it knows what A knew (the charger online, its session) from
    the events A acknowledged, not only from events that come after."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from gridshare.adapters.nats.roles import ControllerProcess
    from gridshare.app import serve_options
    from gridshare.config import parse_site_config
    from gridshare.events import ChargerBooted, ChargerOnline, SessionStarted

    config = parse_site_config(SITE)
    options = replace(serve_options(config, bus_url=nats.url, api_port=None,
                                    db_url=f"sqlite:///{tmp_path / 'c.db'}"),
                      role="controller")
    now = datetime.now(UTC)
    gateway = NatsBus(nats.url, site="roles")
    a = ControllerProcess(config.topology, replace(options, controller_id="A"))
    await a.start()
    try:
        assert a.replayed == 0  # a new consumer: everything comes through it anyway
        gateway.publish(ChargerBooted("r-1", now, "ocpp2.0.1"))
        gateway.publish(ChargerOnline("r-1", now))
        gateway.publish(SessionStarted("r-1", 1, "tx-1", now))
        await gateway.flush(10)
        await eventually(lambda: a.controller.counters["events"] >= 3)
        assert a.controller.state.online("r-1")
    finally:
        await a.stop()  # releases the lease: B takes over at once
    b = ControllerProcess(config.topology, replace(options, controller_id="B"))
    await b.start()
    try:
        # A acknowledged all three (each when it asked for the next one).
        assert b.replayed == 3
        assert b.controller.state.online("r-1")
        assert b.controller.state.active(("r-1", 1))  # the session A saw start
    finally:
        await b.stop()
        await gateway.close()
