"""End-to-end rig: the real app (CSMS + controller) and simulated chargers over WebSockets,
with a monitor that checks every limit against what the simulator offers and draws."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from waits import eventually

from gridshare.adapters.ocpp.config import CsmsConfig
from gridshare.app import GridshareApp, ServeOptions, build_app
from gridshare.config import parse_site
from gridshare.controller.loop import ControllerSettings
from gridshare.core.topology import Topology
from gridshare.sim import EV, SimCharger
from gridshare.sim.site import SimSite

PROTOCOLS = ["ocpp1.6", "ocpp2.0.1"]

SITE = """
site: e2e
voltage: 230
groups:
  - id: service
    max_current: 40
    groups:
      - {id: left, max_current: 25, chargers: [e-1, e-2, e-3]}
      - {id: right, max_current: 25, chargers: [e-4, e-5, e-6]}
chargers:
  - {id: e-1, max_current: 32, phases: 3, failsafe_current: 0}
  - {id: e-2, max_current: 32, phases: 3, failsafe_current: 0}
  - {id: e-3, max_current: 16, phases: 1, phase: L2, failsafe_current: 0}
  - {id: e-4, max_current: 32, phases: 3, failsafe_current: 0}
  - {id: e-5, max_current: 32, phases: 3, failsafe_current: 6}
  - {id: e-6, max_current: 16, phases: 1, phase: L3, failsafe_current: 0}
"""

TOLERANCE_A = 0.5
CAR_LAG_S = 0.5


@dataclass
class Violation:
    at_s: float
    group: str
    phase: int
    what: str
    value_a: float
    limit_a: float


@dataclass
class Monitor:
    """Samples the simulator every ``period_s``: per group and phase, the sum of offered and
    of drawn currents must stay within the group's limit (plus a small tolerance)."""

    topology: Topology
    sim: SimSite
    limits: Callable[[str], float]
    period_s: float = 0.05
    samples: int = 0
    violations: list[Violation] = field(default_factory=list)
    peak: dict[str, float] = field(default_factory=dict)
    diagnose: Callable[[], str] | None = None
    first_violation: str = ""
    """What every charger offered and what the controller believed, at the first one."""
    _started: float = field(default_factory=time.monotonic)

    def sample(self) -> None:
        self.samples += 1
        for gid in self.topology.groups:
            offered = [0.0, 0.0, 0.0]
            drawn = [0.0, 0.0, 0.0]
            for cid in self.topology.subtree_chargers(gid):
                ch = self.sim.chargers[cid]
                vec = self.topology.chargers[cid].phase_vector
                for conn in range(1, ch.connectors + 1):
                    offer = ch.offered_a(conn)
                    d = ch.drawn_a(conn)
                    for p in range(3):
                        offered[p] += vec[p] * offer
                        drawn[p] += d[p]
            limit = self.limits(gid)
            for p in range(3):
                for what, value in (("offered", offered[p]), ("drawn", drawn[p])):
                    self.peak[gid] = max(self.peak.get(gid, 0.0), value)
                    if value > limit + TOLERANCE_A:
                        self.violations.append(Violation(
                            time.monotonic() - self._started, gid, p, what, value, limit))
                        if not self.first_violation and self.diagnose is not None:
                            self.first_violation = f"{self.violations[0]}\n{self.diagnose()}"

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.period_s)


class Rig:
    def __init__(self, protocol: str, *, lease_s: float = 60.0,
                 site: str = SITE, reconnect_s: dict[str, float] | None = None,
                 csms: CsmsConfig | None = None) -> None:
        self.protocol = protocol
        self.reconnect_s = reconnect_s or {}
        """Charger → seconds it stays away after its link drops (default 0.2 s)."""
        self.topology = parse_site(site, "e2e")
        settings = ControllerSettings(lease_s=lease_s, settle_s=1.0, debounce_s=0.02,
                                      tick_s=0.25, retry_backoff_s=0.2)
        self.app: GridshareApp = build_app(self.topology, ServeOptions(
            host="127.0.0.1", ocpp_port=0, api_port=None, db_url="none", csms=csms,
            controller=settings))
        self.sim = SimSite(tick_s=0.1)
        self.monitor = Monitor(self.topology, self.sim, self.limit, diagnose=self.diagnose)
        self._tasks: list[asyncio.Task[None]] = []
        self.extra_limits: dict[str, float] = {}

    def limit(self, group: str) -> float:
        static = self.topology.groups[group].max_current
        assert static is not None
        return min(static, self.extra_limits.get(group, static))

    async def start(self) -> None:
        await self.app.start()
        url = f"ws://127.0.0.1:{self.app.ocpp_port}"
        for cid, ch in self.topology.chargers.items():
            self.sim.add_charger(SimCharger(
                cid, url, protocol=self.protocol, phases=ch.phases,
                phase=ch.phase.name if ch.phase is not None else "L1",
                max_current_a=ch.max_current, min_current_a=ch.min_current,
                meter_interval_s=2.0, reconnect_min_s=self.reconnect_s.get(cid, 0.2),
                reconnect_max_s=max(0.5, self.reconnect_s.get(cid, 0.5))))
        connected = await self.sim.start(wait_connected_s=10.0)
        assert connected == len(self.topology.chargers)
        await self.wait_until(lambda: self.app.controller.state.online_count()
                              == len(self.topology.chargers))
        self._tasks.append(asyncio.create_task(self.monitor.run()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.sim.stop()
        await self.app.stop()

    def diagnose(self) -> str:
        """One line per charger: simulator view (offered, drawn, profiles) against the
        controller's (believed, in force, target)."""
        controller = self.app.controller
        allocation = controller.allocation
        now = controller.clock.now()
        lines = []
        for cid, ch in self.sim.chargers.items():
            key = (cid, 1)
            profiles = ", ".join(f"{p.purpose.value}@c{p.connector}:{p.periods[0].limit:g}"
                                 f"{' tx=' + str(p.transaction_id) if p.transaction_id else ''}"
                                 for p in ch.profiles)
            lines.append(
                f"{cid}: sim offered {ch.offered_a(1):.1f} drawn {max(ch.drawn_a(1)):.1f} "
                f"status {ch.status(1).value} profiles [{profiles}] | controller active "
                f"{controller.state.active(key)} believed {controller.state.believed_a(key)} "
                f"in force {controller.state.in_force_a(key, now)} pending "
                f"{controller.state.pending_a(key)} target "
                f"{allocation.setpoints.get(key) if allocation else None}")
        return "\n".join(lines)

    def plug(self, charger: str, max_current_a: float = 32.0) -> None:
        ev = EV(capacity_kwh=60.0, soc=0.3, max_current_a=max_current_a,
                setpoint_lag_s=CAR_LAG_S)
        self.sim.chargers[charger].plug_nowait(1, ev)

    def unplug(self, charger: str) -> None:
        self.sim.chargers[charger].unplug_nowait(1)

    def offered(self, charger: str) -> float:
        return self.sim.chargers[charger].offered_a(1)

    def settled(self) -> bool:
        """Every car offered what the controller last decided, and nothing left to do."""
        controller = self.app.controller
        allocation = controller.allocation
        if allocation is None or not controller.idle:
            return False
        for cid, ch in self.sim.chargers.items():
            if not ch.connected or ch.ev(1) is None:
                continue
            tx = ch.transaction(1)
            if tx is None or not tx.active:
                return False
            if abs(ch.offered_a(1) - allocation.setpoints[(cid, 1)]) > 0.05:
                return False
        return True

    async def settle(self, timeout_s: float = 10.0) -> None:
        await self.wait_until(self.settled, timeout_s)
        await asyncio.sleep(CAR_LAG_S + 0.2)  # the cars follow

    wait_until = staticmethod(eventually)


@pytest.fixture(params=PROTOCOLS)
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    r = Rig(request.param)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()
