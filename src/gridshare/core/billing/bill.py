"""Intervals priced: the lines and totals of a bill for one id."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


def bill_all(readings: Mapping[str, Sequence[Sequence[Reading]]], start_us: int, end_us: int,
             settings: IntervalSettings, tariff: Tariff | None,
             progress: Callable[[int], None] | None = None
             ) -> tuple[list[BillLine], list[BillTotal]]:
    """The bill of every id over ``[start_us, end_us)``, ids in sorted order. Each id has
    one or more registers (a charger has one per connector): their intervals are summed.
    ``progress`` is told after each id (for a progress bar)."""
    starts = boundaries(start_us, end_us, settings)
    periods = None if tariff is None else prices_for(tariff, starts)
    lines: list[BillLine] = []
    totals: list[BillTotal] = []
    for n, id_ in enumerate(sorted(readings)):
        parts = [intervals(build_track(r, settings), start_us, end_us, settings)
                 for r in readings[id_]]
        items = parts[0] if len(parts) == 1 else merge(parts)
        got, total = bill_for(id_, items, periods)
        lines.extend(got)
        totals.append(total)
        if progress is not None:
            progress(n + 1)
    return lines, totals
