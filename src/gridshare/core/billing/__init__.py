"""Interval billing: exact interval energy from registers, priced by a time-of-use tariff.

Pure: no I/O, no clock. ``intervals`` turns readings into intervals, ``tariff`` prices
them, ``bill`` puts the two together per id (meter, charger or session).
"""

from gridshare.core.billing.bill import BillLine, BillTotal, bill_all, bill_each, bill_for
from gridshare.core.billing.intervals import (
    Flag,
    Interval,
    IntervalSettings,
    Reading,
    Track,
    build_track,
    intervals,
    merge,
    value_at,
    wh_to_mwh,
)
from gridshare.core.billing.tariff import DayPlan, Season, Tariff, TariffPeriod, flat, prices_for

__all__ = [
    "BillLine",
    "BillTotal",
    "DayPlan",
    "Flag",
    "Interval",
    "IntervalSettings",
    "Reading",
    "Season",
    "Tariff",
    "TariffPeriod",
    "Track",
    "bill_all",
    "bill_each",
    "bill_for",
    "build_track",
    "flat",
    "intervals",
    "merge",
    "prices_for",
    "value_at",
    "wh_to_mwh",
]
