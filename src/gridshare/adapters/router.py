"""One :class:`ChargerDriver` for the controller over several: each charger's requests go
to the driver that controls it (OCPP by default, OpenEVSE for ``driver: openevse``)."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence

from gridshare.drivers import ChargerDriver, CommandOutcome, SetpointRequest


class DriverRouter:
    """Dispatches by charger id; a charger not in ``by_charger`` goes to ``default``."""

    def __init__(self, default: ChargerDriver, by_charger: Mapping[str, ChargerDriver]) -> None:
        self.default = default
        self.by_charger = dict(by_charger)

    def driver(self, charger: str) -> ChargerDriver:
        return self.by_charger.get(charger, self.default)

    def submit_setpoints(self, requests: Sequence[SetpointRequest],
                         ) -> list[Awaitable[CommandOutcome]]:
        """Each driver gets its own requests as one batch, in order; the answers come back
        in the order of ``requests``."""
        groups: dict[int, tuple[ChargerDriver, list[int]]] = {}
        for i, req in enumerate(requests):
            drv = self.driver(req.charger)
            groups.setdefault(id(drv), (drv, []))[1].append(i)
        out: list[Awaitable[CommandOutcome] | None] = [None] * len(requests)
        for drv, indices in groups.values():
            for i, awaitable in zip(indices, drv.submit_setpoints([requests[i] for i in indices]),
                                    strict=True):
                out[i] = awaitable
        return [a for a in out if a is not None]

    async def apply_setpoint(self, charger: str, connector: int, current_a: float,
                             lease_s: float) -> CommandOutcome:
        return await self.driver(charger).apply_setpoint(charger, connector, current_a,
                                                         lease_s)

    async def apply_failsafe(self, charger: str, current_a: float) -> CommandOutcome:
        return await self.driver(charger).apply_failsafe(charger, current_a)

    async def apply_charger_cap(self, charger: str, current_a: float | None,
                                ) -> CommandOutcome:
        return await self.driver(charger).apply_charger_cap(charger, current_a)
