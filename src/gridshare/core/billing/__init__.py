"""Interval billing: exact interval energy from registers, priced by a time-of-use tariff.

Pure: no I/O, no clock. ``intervals`` turns readings into intervals, ``tariff`` prices
them, ``money`` keeps the costs exact, ``bill`` puts them together per id (meter, charger
or session).
"""

from gridshare.core.billing.bill import (
    BillLine,
    BillTotal,
    Direction,
    bill_all,
    bill_each,
    bill_for,
)
from gridshare.core.billing.intervals import (
    Flag,
    Interval,
    IntervalSettings,
    Reading,
    Track,
    build_track,
    export_readings,
    intervals,
    merge,
    value_at,
    wh_to_mwh,
)
from gridshare.core.billing.money import (
    DEFAULT_COST_DECIMALS,
    MAX_COST_DECIMALS,
    check_decimals,
    cost_of_units,
    decimal_text,
    kwh_text,
    line_cost,
    to_price,
)
from gridshare.core.billing.tariff import DayPlan, Season, Tariff, TariffPeriod, flat, prices_for

__all__ = [
    "DEFAULT_COST_DECIMALS",
    "MAX_COST_DECIMALS",
    "BillLine",
    "BillTotal",
    "DayPlan",
    "Direction",
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
    "check_decimals",
    "cost_of_units",
    "decimal_text",
    "export_readings",
    "flat",
    "intervals",
    "kwh_text",
    "line_cost",
    "merge",
    "prices_for",
    "to_price",
    "value_at",
    "wh_to_mwh",
]
