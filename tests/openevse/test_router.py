"""DriverRouter: each charger's requests reach its own driver, answers keep their order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

from gridshare.adapters.router import DriverRouter
from gridshare.drivers import CommandOutcome, CommandResult, SetpointRequest


class Recorder:
    """A driver that answers at once and says who it is in the detail."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.batches: list[list[str]] = []
        self.calls: list[tuple[str, str]] = []

    def _ok(self, what: str) -> CommandOutcome:
        return CommandOutcome(CommandResult.ACCEPTED, detail=f"{self.name}:{what}")

    def submit_setpoints(self, requests: Sequence[SetpointRequest],
                         ) -> list[Awaitable[CommandOutcome]]:
        self.batches.append([r.charger for r in requests])

        async def one(r: SetpointRequest) -> CommandOutcome:
            await asyncio.sleep(0)
            return self._ok(f"{r.charger}={r.current_a:g}")
        return [one(r) for r in requests]

    async def apply_setpoint(self, charger: str, connector: int, current_a: float,
                             lease_s: float) -> CommandOutcome:
        self.calls.append(("setpoint", charger))
        return self._ok(charger)

    async def apply_failsafe(self, charger: str, current_a: float) -> CommandOutcome:
        self.calls.append(("failsafe", charger))
        return self._ok(charger)

    async def apply_charger_cap(self, charger: str, current_a: float | None,
                                ) -> CommandOutcome:
        self.calls.append(("cap", charger))
        return self._ok(charger)


async def test_batches_split_by_driver_in_order() -> None:
    ocpp, oe = Recorder("ocpp"), Recorder("oe")
    router = DriverRouter(ocpp, {"box-1": oe, "box-2": oe})
    reqs = [SetpointRequest(c, 1, a, 60.0) for c, a in
            (("cp-1", 10), ("box-1", 7), ("cp-2", 8), ("box-2", 6.5))]
    outcomes = [await a for a in router.submit_setpoints(reqs)]
    assert [o.detail for o in outcomes] == ["ocpp:cp-1=10", "oe:box-1=7", "ocpp:cp-2=8",
                                            "oe:box-2=6.5"]
    assert ocpp.batches == [["cp-1", "cp-2"]] and oe.batches == [["box-1", "box-2"]]
    assert router.submit_setpoints([]) == []


async def test_single_commands_routed() -> None:
    ocpp, oe = Recorder("ocpp"), Recorder("oe")
    router = DriverRouter(ocpp, {"box-1": oe})
    assert (await router.apply_failsafe("box-1", 0)).detail == "oe:box-1"
    assert (await router.apply_failsafe("cp-1", 0)).detail == "ocpp:cp-1"
    assert (await router.apply_charger_cap("box-1", None)).detail == "oe:box-1"
    assert (await router.apply_setpoint("cp-1", 1, 8, 60)).detail == "ocpp:cp-1"
    assert oe.calls == [("failsafe", "box-1"), ("cap", "box-1")]
    assert ocpp.calls == [("failsafe", "cp-1"), ("setpoint", "cp-1")]
