"""Intervals priced: the lines and totals of a bill for one id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gridshare.core.billing.intervals import MWH_PER_KWH, Flag, Interval
from gridshare.core.billing.tariff import TariffPeriod


@dataclass(frozen=True, slots=True)
class BillLine:
    id: str
    start_us: int
    end_us: int
    energy_mwh: int
    cost: float | None
    tariff_period: str | None
    flags: tuple[Flag, ...]


@dataclass(frozen=True, slots=True)
class BillTotal:
    id: str
    energy_mwh: int
    cost: float | None


def bill_for(id_: str, items: Sequence[Interval],
             periods: Sequence[TariffPeriod] | None) -> tuple[list[BillLine], BillTotal]:
    """Each interval at its period's price (``periods[i]`` for ``items[i]``; None: no
    tariff, no cost). The total's energy is the exact sum; its cost the sum of the lines'."""
    lines = []
    cost_sum = 0.0
    for n, i in enumerate(items):
        if periods is None:
            lines.append(BillLine(id_, i.start_us, i.end_us, i.energy_mwh, None, None,
                                  i.flags))
            continue
        p = periods[n]
        cost = i.energy_mwh * p.price / MWH_PER_KWH
        cost_sum += cost
        lines.append(BillLine(id_, i.start_us, i.end_us, i.energy_mwh, cost, p.name, i.flags))
    total = BillTotal(id_, sum(i.energy_mwh for i in items),
                      None if periods is None else cost_sum)
    return lines, total
