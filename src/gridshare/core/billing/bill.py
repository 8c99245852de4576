"""Intervals priced: the lines and totals of a bill for one id."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from gridshare.core.billing.intervals import (
    MWH_PER_KWH,
    Flag,
    Interval,
    IntervalSettings,
    Reading,
    boundaries,
    build_track,
    intervals,
    merge,
)
from gridshare.core.billing.tariff import Tariff, TariffPeriod, prices_for


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


def bill_each(readings: Mapping[str, Sequence[Sequence[Reading]]], start_us: int,
              end_us: int, settings: IntervalSettings, tariff: Tariff | None
              ) -> Iterator[tuple[list[BillLine], BillTotal]]:
    """The bill of each id over ``[start_us, end_us)``, ids in sorted order, one at a time
    (a month of 1,000 meters is millions of lines: the caller writes them as they come).
    Each id has one or more registers (a charger has one per connector): their intervals
    are summed."""
    starts = boundaries(start_us, end_us, settings)
    periods = None if tariff is None else prices_for(tariff, starts)
    for id_ in sorted(readings):
        parts = [intervals(build_track(r, settings), start_us, end_us, settings)
                 for r in readings[id_]]
        items = parts[0] if len(parts) == 1 else merge(parts)
        yield bill_for(id_, items, periods)


def bill_all(readings: Mapping[str, Sequence[Sequence[Reading]]], start_us: int, end_us: int,
             settings: IntervalSettings, tariff: Tariff | None
             ) -> tuple[list[BillLine], list[BillTotal]]:
    """Every id's lines and totals at once (``bill_each``, collected)."""
    lines: list[BillLine] = []
    totals: list[BillTotal] = []
    for got, total in bill_each(readings, start_us, end_us, settings, tariff):
        lines.extend(got)
        totals.append(total)
    return lines, totals
