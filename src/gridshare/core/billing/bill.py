"""Intervals priced: the lines and totals of a bill for one id.

Costs are exact decimals (money.py): each line rounded once to the bill's cost decimals,
each total the exact sum of its lines, so the lines of a bill add up to its totals.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from gridshare.core.billing.intervals import (
    Flag,
    Interval,
    IntervalSettings,
    Reading,
    boundaries,
    build_track,
    export_readings,
    intervals,
    merge,
)
from gridshare.core.billing.money import DEFAULT_COST_DECIMALS, Rate, cost_of_units
from gridshare.core.billing.tariff import Tariff, TariffPeriod, prices_for

Direction = Literal["import", "export"]


@dataclass(frozen=True, slots=True)
class BillLine:
    id: str
    start_us: int
    end_us: int
    energy_mwh: int
    cost: Decimal | None
    """Rounded to the bill's cost decimals; None: no tariff."""
    tariff_period: str | None
    flags: tuple[Flag, ...]
    direction: Direction = "import"
    """``export``: energy fed back (the export register), priced at the export price."""


@dataclass(frozen=True, slots=True)
class BillTotal:
    id: str
    energy_mwh: int
    cost: Decimal | None
    """The exact sum of the lines' (rounded) costs; None: no tariff."""
    export_energy_mwh: int | None = None
    """The exact sum of the export lines; None: the id sent no export register."""
    export_cost: Decimal | None = None
    """The exact sum of the export lines' costs; None: no export data or no export price."""


def bill_for(id_: str, items: Sequence[Interval], periods: Sequence[TariffPeriod] | None,
             cost_decimals: int = DEFAULT_COST_DECIMALS, direction: Direction = "import"
             ) -> tuple[list[BillLine], BillTotal]:
    """Each interval at its period's price (``periods[i]`` for ``items[i]``; None: no
    tariff, no cost), rounded half-even to ``cost_decimals`` places. The total's energy is
    the exact sum; its cost the exact sum of the lines' rounded costs.

    ``direction="export"``: the intervals are exported energy, priced at each period's
    ``export_price``; a period without one gives the line no cost (None: not priced, which
    0 would misstate), and the total none either. The total is then the export one: its
    ``energy_mwh``/``cost`` are the export sums (``bill_each`` puts them on the id's total
    as ``export_energy_mwh``/``export_cost``)."""
    energy = sum(i.energy_mwh for i in items)
    if periods is None:
        lines = [BillLine(id_, i.start_us, i.end_us, i.energy_mwh, None, None, i.flags,
                          direction) for i in items]
        return lines, BillTotal(id_, energy, None)
    rates: dict[Decimal, Rate] = {}  # a tariff has a handful of prices
    lines = []
    total_units = 0
    unpriced = False
    for n, i in enumerate(items):
        p = periods[n]
        price = p.price if direction == "import" else p.export_price
        if price is None:
            unpriced = True
            lines.append(BillLine(id_, i.start_us, i.end_us, i.energy_mwh, None, p.name,
                                  i.flags, direction))
            continue
        rate = rates.get(price)
        if rate is None:
            rate = rates[price] = Rate.of(price, cost_decimals)
        units = rate.units(i.energy_mwh)
        total_units += units
        lines.append(BillLine(id_, i.start_us, i.end_us, i.energy_mwh,
                              cost_of_units(units, cost_decimals), p.name, i.flags,
                              direction))
    return lines, BillTotal(id_, energy, None if unpriced else
                            cost_of_units(total_units, cost_decimals))


def bill_each(readings: Mapping[str, Sequence[Sequence[Reading]]], start_us: int,
              end_us: int, settings: IntervalSettings, tariff: Tariff | None,
              cost_decimals: int = DEFAULT_COST_DECIMALS
              ) -> Iterator[tuple[list[BillLine], BillTotal]]:
    """The bill of each id over ``[start_us, end_us)``, ids in sorted order, one at a time
    (a month of 1,000 meters is millions of lines: the caller writes them as they come).
    Each id has one or more registers (a charger has one per connector): their intervals
    are summed. An id with an export register reading has export lines too, after its
    import lines: the export register through the same interval code, its sums on the
    total (``export_energy_mwh``, ``export_cost``)."""
    starts = boundaries(start_us, end_us, settings)
    periods = None if tariff is None else prices_for(tariff, starts)
    for id_ in sorted(readings):
        parts = [intervals(build_track(r, settings), start_us, end_us, settings)
                 for r in readings[id_]]
        items = parts[0] if len(parts) == 1 else merge(parts)
        lines, total = bill_for(id_, items, periods, cost_decimals)
        exports = [export_readings(r) for r in readings[id_]]
        if any(exports):
            parts = [intervals(build_track(r, settings), start_us, end_us, settings)
                     for r in exports]
            items = parts[0] if len(parts) == 1 else merge(parts)
            out, export = bill_for(id_, items, periods, cost_decimals, "export")
            lines.extend(out)
            total = BillTotal(id_, total.energy_mwh, total.cost, export.energy_mwh,
                              export.cost)
        yield lines, total


def bill_all(readings: Mapping[str, Sequence[Sequence[Reading]]], start_us: int, end_us: int,
             settings: IntervalSettings, tariff: Tariff | None,
             cost_decimals: int = DEFAULT_COST_DECIMALS
             ) -> tuple[list[BillLine], list[BillTotal]]:
    """Every id's lines and totals at once (``bill_each``, collected)."""
    lines: list[BillLine] = []
    totals: list[BillTotal] = []
    for got, total in bill_each(readings, start_us, end_us, settings, tariff, cost_decimals):
        lines.extend(got)
        totals.append(total)
    return lines, totals
