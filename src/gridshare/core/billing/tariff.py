"""Time-of-use tariffs: a price per kWh by season, kind of day and time of day.

Intervals are UTC instants; periods are local clock times in the tariff's time zone. An
interval is priced by the local time of its *start* (an interval that straddles a period
boundary, possible only when a boundary is not on an interval boundary, takes the period
it starts in). On a DST day the local day simply has 92 or 100 quarter hours: each is
priced by the local time it starts at (the repeated hour of autumn is priced twice, as
the clock reads).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal

from gridshare.core.billing.money import to_price

MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class TariffPeriod:
    name: str
    price: Decimal
    """Per kWh, in the tariff's currency; exact (money.to_price reads what was written)."""
    start_min: int
    """Local minutes after midnight; the period runs until the next one starts."""
    export_price: Decimal | None = None
    """Per kWh fed back (export), exact; None: exported energy is not priced (cost null)."""


@dataclass(frozen=True, slots=True)
class DayPlan:
    """A day's periods, sorted by start, the first starting at 00:00 (a day is covered
    whole, by construction: checking happens when the file is read)."""

    periods: tuple[TariffPeriod, ...]

    def at(self, minute: int) -> TariffPeriod:
        starts = [p.start_min for p in self.periods]
        return self.periods[max(0, bisect_right(starts, minute) - 1)]


@dataclass(frozen=True, slots=True)
class Season:
    name: str
    start: tuple[int, int]
    """(month, day), first day of the season."""
    end: tuple[int, int]
    """(month, day), last day of the season (inclusive); before ``start``: wraps the year."""
    weekdays: DayPlan
    weekends: DayPlan
    """Saturdays, Sundays and holidays."""

    def contains(self, month: int, day: int) -> bool:
        md = (month, day)
        if self.start <= self.end:
            return self.start <= md <= self.end
        return md >= self.start or md <= self.end


@dataclass(frozen=True, slots=True)
class Tariff:
    zone: tzinfo
    seasons: tuple[Season, ...]
    holidays: frozenset[date] = frozenset()
    currency: str | None = None

    def period_at(self, at: datetime) -> TariffPeriod:
        """The period in force at the instant ``at`` (aware)."""
        local = at.astimezone(self.zone)
        season = self.season_of(local.date())
        weekend = local.weekday() >= 5 or local.date() in self.holidays
        plan = season.weekends if weekend else season.weekdays
        return plan.at(local.hour * 60 + local.minute)

    def season_of(self, day: date) -> Season:
        for s in self.seasons:
            if s.contains(day.month, day.day):
                return s
        return self.seasons[-1]  # unreachable for a checked tariff: seasons cover the year


def flat(price: Decimal | int | float | str, zone: tzinfo = UTC, name: str = "flat",
         export_price: Decimal | int | float | str | None = None) -> Tariff:
    plan = DayPlan((TariffPeriod(name, to_price(price), 0,
                                 None if export_price is None else to_price(export_price)),))
    return Tariff(zone, (Season("all year", (1, 1), (12, 31), plan, plan),))


def prices_for(tariff: Tariff, starts_us: range) -> list[TariffPeriod]:
    """The period of each interval start (computed once per run and shared by every meter:
    the tariff depends on the time only)."""
    return [tariff.period_at(datetime.fromtimestamp(s / 1_000_000, UTC)) for s in starts_us]
