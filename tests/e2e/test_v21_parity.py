"""A 2.1 charger gets everything a 2.0.1 charger gets: the real CSMS and controller with
every simulated charger speaking ``ocpp2.1`` (the simulator checks every frame against the
official 2.1 schemas): limits hold as cars come and go, a cut is followed, and a charger
that drops off falls back to its failsafe and is recomputed."""

from __future__ import annotations

import asyncio

from gridshare.events import LimitChanged

from .conftest import Rig

V21 = "ocpp2.1"


async def test_limits_hold_and_a_cut_is_followed_over_ocpp21() -> None:
    rig = Rig(V21)
    await rig.start()
    try:
        assert {rig.app.csms.protocol_of(c) for c in rig.topology.chargers} == {V21}
        for cid in ("e-1", "e-2", "e-4"):
            rig.plug(cid)
        await rig.wait_until(lambda: (rig.offered("e-1"), rig.offered("e-2"),
                                      rig.offered("e-4")) == (12.5, 12.5, 15.0), 15.0)
        await rig.settle()
        rig.app.bus.publish(LimitChanged("service", rig.app.clock.now(), "demand_response",
                                         max_current=20.0, reason="DR test"))
        await rig.settle()
        rig.extra_limits["service"] = 20.0
        await asyncio.sleep(0.5)
        assert sum(rig.offered(c) for c in ("e-1", "e-2", "e-4")) <= 20.0 + 1e-6
        del rig.extra_limits["service"]
        rig.app.bus.publish(LimitChanged("service", rig.app.clock.now(), "demand_response"))
        await rig.wait_until(lambda: rig.offered("e-4") == 15.0, 15.0)
        assert rig.monitor.samples > 20
        assert rig.monitor.violations == [], rig.monitor.first_violation
    finally:
        await rig.stop()


async def test_a_21_charger_dropping_off_falls_back_to_its_failsafe() -> None:
    rig = Rig(V21, lease_s=4.0)
    await rig.start()
    try:
        rig.plug("e-4")
        rig.plug("e-5")  # failsafe 6 A
        await rig.wait_until(lambda: rig.offered("e-4") == rig.offered("e-5") == 12.5,
                             timeout_s=15.0)
        await rig.sim.chargers["e-5"].disconnect()
        await rig.wait_until(lambda: not rig.app.controller.state.online("e-5"))
        assert rig.offered("e-4") == 12.5
        await rig.wait_until(lambda: rig.offered("e-5") == 6.0, timeout_s=8.0)
        await rig.wait_until(lambda: rig.offered("e-4") == 19.0, timeout_s=5.0)
        await rig.sim.chargers["e-5"].connect()
        await rig.wait_until(lambda: rig.app.controller.state.online("e-5"))
        await rig.wait_until(lambda: rig.offered("e-4") == rig.offered("e-5") == 12.5,
                             timeout_s=15.0)
        assert rig.monitor.violations == [], rig.monitor.first_violation
    finally:
        await rig.stop()
