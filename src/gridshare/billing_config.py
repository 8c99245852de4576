"""The ``billing:`` block of a site file and tariff files: checked, then as core objects.

The block is a pydantic model (``BillingSpec``) that config.py validates with the rest of
the site file; what a schema cannot say (periods that overlap or leave hours uncovered,
seasons that overlap or leave days out) is found by ``tariff_problems`` in the same pass,
each problem with its path, so config.py reports it with the file and line. A separate
tariff file (``tariff_file:``, or the ``charge-plan --tariff`` file format) is checked
the same way by ``load_tariff_file``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gridshare.core.billing import (
    DEFAULT_COST_DECIMALS,
    MAX_COST_DECIMALS,
    DayPlan,
    IntervalSettings,
    Season,
    Tariff,
    TariffPeriod,
    to_price,
)

if TYPE_CHECKING:
    from gridshare.config import SiteConfig

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]

_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?:in)?)?")
_CLOCK = re.compile(r"(\d{1,2}):([0-5]\d)")
_MONTH_DAY = re.compile(r"(\d{1,2})-(\d{1,2})")
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def interval_minutes(value: int | str) -> int | None:
    """``15``, ``"15m"``, ``"1h"`` -> minutes; None if not a whole number of minutes."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    found = _DURATION.fullmatch(value.strip())
    if not found or not any(found.groups()):
        return None
    hours, minutes = (int(g) if g else 0 for g in found.groups())
    return hours * 60 + minutes


class BillingSpec(BaseModel):
    """``billing:`` in the site file (docs/billing.md). Every default is stated there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = "UTC"
    """IANA zone of the tariff's clock times (intervals themselves are UTC instants)."""
    interval: int | str = "15m"
    """Interval length: minutes, or ``15m``/``1h``; must divide a day."""
    gap_after: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 2.0
    """Readings further apart than this many intervals make a gap (flagged)."""
    register_modulus_wh: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    """Where the registers roll over to 0, when known (then a drop loses nothing)."""
    currency: Annotated[str, Field(min_length=1, max_length=16)] | None = None
    cost_decimals: Annotated[int, Field(ge=0, le=MAX_COST_DECIMALS, strict=True)] = \
        DEFAULT_COST_DECIMALS
    """Places each interval's cost is rounded to (half-even, once); totals are the exact
    sum of the rounded lines."""
    tariff: Any = None
    """Inline tariff: a list of steps, or seasons/weekdays/weekends/holidays."""
    tariff_file: Path | None = None
    """A tariff file (``tariff:`` at its top, as ``charge-plan --tariff`` reads), relative
    to the site file."""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name like "
                             "Europe/Berlin)") from exc
        return value

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: int | str) -> int | str:
        minutes = interval_minutes(value)
        if minutes is None or minutes <= 0 or (24 * 60) % minutes:
            raise ValueError(f"must be minutes that divide a day, like 15, \"15m\" or "
                             f"\"1h\" (got {value!r})")
        return value

    @model_validator(mode="after")
    def _one_tariff(self) -> BillingSpec:
        if self.tariff is not None and self.tariff_file is not None:
            raise ValueError("give tariff or tariff_file, not both")
        return self

    @property
    def interval_s(self) -> int:
        minutes = interval_minutes(self.interval)
        assert minutes is not None
        return minutes * 60

    def settings(self) -> IntervalSettings:
        modulus = None if self.register_modulus_wh is None \
            else round(self.register_modulus_wh * 1000)
        return IntervalSettings(self.interval_s, self.gap_after, modulus)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# --- the tariff's data -------------------------------------------------------------------


def clock_minutes(raw: object, *, end: bool = False) -> int | None:
    """``"07:00"`` -> 420; ``"24:00"`` only as an end. An unquoted ``07:00`` reaches us as
    420: YAML 1.1 reads it as a base-60 number, minutes after midnight."""
    top = 24 * 60 if end else 24 * 60 - 1
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw if 0 <= raw <= top else None
    if not isinstance(raw, str):
        return None
    found = _CLOCK.fullmatch(raw.strip())
    if not found:
        return None
    minutes = int(found.group(1)) * 60 + int(found.group(2))
    return minutes if minutes <= top else None


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _span(start: int, end: int) -> str:
    """A period's default name: its clock range, ``"22:00-07:00"``, ``"00:00-24:00"``."""
    end = end - 24 * 60 if end > 24 * 60 else end
    return f"{_hhmm(start)}-{_hhmm(end) if end < 24 * 60 else '24:00'}"


def _month_day(raw: object) -> tuple[int, int] | None:
    if not isinstance(raw, str):
        return None
    found = _MONTH_DAY.fullmatch(raw.strip())
    if not found:
        return None
    month, day = int(found.group(1)), int(found.group(2))
    if not 1 <= month <= 12 or not 1 <= day <= _DAYS_IN_MONTH[month - 1]:
        return None
    return month, day


def _price(raw: object) -> Decimal | None:
    """The exact decimal of a price: a YAML number (a float read through its shortest
    repr, so ``0.1`` is 0.1) or a quoted decimal (``"0.123456789012345678"``: every digit
    kept)."""
    if not isinstance(raw, int | float | str) or isinstance(raw, bool):
        return None
    if isinstance(raw, str) and not _DECIMAL.fullmatch(raw.strip()):
        return None  # Decimal() would also take "NaN", "Infinity", "1_000", "1e3"
    try:
        return to_price(raw)
    except ValueError:
        return None


def _runs(covered: list[int], fmt: Callable[[int], str], *, inclusive: bool) -> list[str]:
    """Runs of indices with ``covered[i] == 0``, as text: ``fmt(first)–fmt(end)`` where
    ``end`` is the run's last index (``inclusive``: days) or the one after it (clock
    minutes: 20:00–24:00); a run of one inclusive index is just ``fmt(first)``."""
    out, i, size = [], 0, len(covered)
    while i < size:
        if covered[i] == 0:
            j = i
            while j < size and covered[j] == 0:
                j += 1
            if inclusive:
                out.append(fmt(i) if j - i == 1 else f"{fmt(i)}–{fmt(j - 1)}")
            else:
                out.append(f"{fmt(i)}–{fmt(j)}")
            i = j
        else:
            i += 1
    return out


def _day_plan(raw: Any, loc: Loc, problems: list[Problem]) -> DayPlan | None:
    """A day's steps: ``[{from, price, name?}]`` (each until the next; the last runs over
    midnight into the first) or ``[{from, to, price, name?}]`` (periods that must cover
    the day exactly once); ``export_price`` (per kWh fed back) on every step or none."""
    if not isinstance(raw, list) or not raw:
        problems.append((loc, "must be a list of steps {from: \"HH:MM\", price: P}"))
        return None
    before = len(problems)
    with_to = [isinstance(s, dict) and "to" in s for s in raw]
    with_export = any(isinstance(s, dict) and "export_price" in s for s in raw)
    steps: list[tuple[int, int | None, Decimal, str | None]] = []
    exports: list[Decimal | None] = []
    for i, step in enumerate(raw):
        sloc = (*loc, i)
        if not isinstance(step, dict):
            problems.append((sloc, "must be {from: \"HH:MM\", price: P} (to, name optional)"))
            continue
        for key in step:
            if key not in ("from", "to", "price", "name", "export_price"):
                problems.append(((*sloc, str(key)), "unknown field (from, to, price, name, "
                                 "export_price)"))
        start = clock_minutes(step.get("from"))
        if start is None:
            problems.append(((*sloc, "from"), f"must be a time of day like \"07:00\" (got "
                             f"{step.get('from')!r})"))
        end = None
        if "to" in step:
            end = clock_minutes(step["to"], end=True)
            if end is None:
                problems.append(((*sloc, "to"), f"must be a time of day like \"22:00\" or "
                                 f"\"24:00\" (got {step['to']!r})"))
        elif any(with_to):
            problems.append(((*sloc, "to"), "required: every step has a `to` once one has"))
        price = _price(step.get("price"))
        if price is None:
            problems.append(((*sloc, "price"), f"must be a number, or a decimal in "
                             f"quotes like \"0.2235\" (got {step.get('price')!r})"))
        export: Decimal | None = None
        if "export_price" in step:
            export = _price(step["export_price"])
            if export is None:
                problems.append(((*sloc, "export_price"), f"must be a number, or a decimal "
                                 f"in quotes like \"0.08\" (got {step['export_price']!r})"))
        elif with_export:
            problems.append(((*sloc, "export_price"), "required: every step has an "
                             "export_price once one has"))
        name = step.get("name")
        if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 64):
            problems.append(((*sloc, "name"), "must be a text of 1 to 64 characters"))
        if start is not None and price is not None:
            steps.append((start, end, price, name if isinstance(name, str) else None))
            exports.append(export)
    if len(problems) > before:
        return None
    if not any(with_to):
        for i in range(1, len(steps)):
            if steps[i][0] <= steps[i - 1][0]:
                problems.append(((*loc, i, "from"), "must come after the step before it"))
        if len(problems) > before:
            return None
        bounds = [s[0] for s in steps] + [steps[0][0] + 24 * 60]
        periods = [TariffPeriod(n or _span(s, bounds[k + 1]), p, s, exports[k])
                   for k, (s, _, p, n) in enumerate(steps)]
        if periods[0].start_min > 0:  # before the first step: the last one, from the day before
            last = periods[-1]
            periods.insert(0, TariffPeriod(last.name, last.price, 0, last.export_price))
        return DayPlan(tuple(periods))
    owner = [-1] * (24 * 60)
    for k, (s, e, _p, _n) in enumerate(steps):
        assert e is not None
        span = range(s, e) if e > s else [*range(s, 24 * 60), *range(0, e)]
        clash = next((m for m in span if owner[m] >= 0), None)
        if clash is not None:
            other = owner[clash]
            problems.append(((*loc, k), f"overlaps step {other} at {_hhmm(clash)}"))
        for m in span:
            if owner[m] < 0:
                owner[m] = k
    missing = _runs([1 if o >= 0 else 0 for o in owner], _hhmm, inclusive=False)
    if missing:
        problems.append((loc, f"no period covers {', '.join(missing)}"))
    if len(problems) > before:
        return None
    periods = []
    for m in range(24 * 60):
        if m == 0 or owner[m] != owner[m - 1]:
            s, e, p, n = steps[owner[m]]
            assert e is not None
            periods.append(TariffPeriod(n or _span(s, e), p, m, exports[owner[m]]))
    return DayPlan(tuple(periods))


def _day_index(month: int, day: int) -> int:
    return sum(_DAYS_IN_MONTH[:month - 1]) + day - 1


def _index_day(index: int) -> str:
    month = 0
    while index >= _DAYS_IN_MONTH[month]:
        index -= _DAYS_IN_MONTH[month]
        month += 1
    return f"{month + 1:02d}-{index + 1:02d}"


def _holidays(raw: Any, loc: Loc, problems: list[Problem]) -> frozenset[date]:
    if raw is None:
        return frozenset()
    if not isinstance(raw, list):
        problems.append((loc, "must be a list of dates like 2026-12-25"))
        return frozenset()
    out = set()
    for i, item in enumerate(raw):
        if isinstance(item, date):
            out.add(item)
            continue
        try:
            out.add(date.fromisoformat(str(item)))
        except ValueError:
            problems.append(((*loc, i), f"must be a date like 2026-12-25 (got {item!r})"))
    return frozenset(out)


def _seasons(raw: Any, loc: Loc, problems: list[Problem]) -> list[Season]:
    if not isinstance(raw, list) or not raw:
        problems.append((loc, "must be a list of seasons {name, from: MM-DD, to: MM-DD, "
                         "weekdays, weekends}"))
        return []
    dated = True
    out: list[Season] = []
    owner = [-1] * 366
    for i, item in enumerate(raw):
        sloc = (*loc, i)
        if not isinstance(item, dict):
            problems.append((sloc, "must be {name, from: MM-DD, to: MM-DD, weekdays, weekends}"))
            continue
        for key in item:
            if key not in ("name", "from", "to", "weekdays", "weekends"):
                problems.append(((*sloc, str(key)),
                                 "unknown field (name, from, to, weekdays, weekends)"))
        name = item.get("name", f"season {i}")
        if not isinstance(name, str) or not name:
            problems.append(((*sloc, "name"), "must be a text"))
        start, end = _month_day(item.get("from")), _month_day(item.get("to"))
        for key, value in (("from", start), ("to", end)):
            if value is None:
                problems.append(((*sloc, key), f"must be a day of the year like \"04-01\" "
                                 f"(month-day; got {item.get(key)!r})"))
        weekdays = _day_plan(item.get("weekdays"), (*sloc, "weekdays"), problems)
        weekends = weekdays if "weekends" not in item else \
            _day_plan(item.get("weekends"), (*sloc, "weekends"), problems)
        if start is None or end is None:
            dated = False
            continue
        a, b = _day_index(*start), _day_index(*end)
        days = range(a, b + 1) if a <= b else [*range(a, 366), *range(0, b + 1)]
        clash = next((d for d in days if owner[d] >= 0), None)
        if clash is not None:
            problems.append((sloc, f"overlaps season {owner[clash]} on {_index_day(clash)}"))
        for d in days:
            if owner[d] < 0:
                owner[d] = i
        if weekdays is not None and weekends is not None and isinstance(name, str):
            out.append(Season(name, start, end, weekdays, weekends))
    if dated:
        missing = _runs([1 if o >= 0 else 0 for o in owner], _index_day, inclusive=True)
        if missing:
            problems.append((loc, f"no season covers {', '.join(missing)}"))
    return out


def tariff_problems(raw: Any, loc: Loc, spec: BillingSpec) -> tuple[Tariff | None,
                                                                      list[Problem]]:
    """The tariff of ``raw`` (a list of steps, or a mapping of seasons / weekdays /
    weekends / holidays), or None with every problem found, each at its path."""
    problems: list[Problem] = []
    holidays: frozenset[date] = frozenset()
    if isinstance(raw, list):
        plan = _day_plan(raw, loc, problems)
        seasons = [] if plan is None else [Season("all year", (1, 1), (12, 31), plan, plan)]
    elif isinstance(raw, dict):
        for key in raw:
            if key not in ("seasons", "weekdays", "weekends", "holidays"):
                problems.append(((*loc, str(key)),
                                 "unknown field (seasons, weekdays, weekends, holidays)"))
        holidays = _holidays(raw.get("holidays"), (*loc, "holidays"), problems)
        if "seasons" in raw:
            if "weekdays" in raw or "weekends" in raw:
                problems.append((loc, "give seasons, or weekdays/weekends for the whole "
                                 "year, not both"))
            seasons = _seasons(raw["seasons"], (*loc, "seasons"), problems)
        else:
            weekdays = _day_plan(raw.get("weekdays"), (*loc, "weekdays"), problems)
            weekends = weekdays if "weekends" not in raw else \
                _day_plan(raw["weekends"], (*loc, "weekends"), problems)
            seasons = [] if weekdays is None or weekends is None else \
                [Season("all year", (1, 1), (12, 31), weekdays, weekends)]
    else:
        problems.append((loc, "must be a list of steps {from: \"HH:MM\", price: P}, or a "
                         "mapping with seasons (or weekdays, weekends) and holidays"))
        seasons = []
    if problems or not seasons:
        return None, problems
    priced = {p.export_price is not None for s in seasons for plan in (s.weekdays, s.weekends)
              for p in plan.periods}
    if len(priced) > 1:  # else some export lines would have a cost and others none
        return None, [(loc, "export_price: give it on every step of every day, or on none")]
    return Tariff(spec.zone, tuple(seasons), holidays, spec.currency), problems


def load_tariff_file(path: Path, spec: BillingSpec) -> Tariff:
    """A tariff file (``tariff:`` at its top, as ``charge-plan --tariff``); raise
    ConfigError naming every problem with its file and line."""
    from gridshare.config import ProblemList, read_mapping, read_text

    text = read_text(path)
    data, needs_lines = read_mapping(text, str(path), "tariff")
    problems = ProblemList(str(path))
    for key in data:
        if key != "tariff":
            problems.add((str(key),), "unknown field (tariff)")
    if "tariff" not in data:
        problems.add(("tariff",), "required")
    tariff, found = tariff_problems(data.get("tariff"), ("tariff",), spec)
    for loc, message in found:
        problems.add(loc, message)
    problems.raise_if_any(text, duplicates=needs_lines)
    assert tariff is not None
    return tariff


@dataclass(frozen=True, slots=True)
class Billing:
    """What ``gridshare bill`` needs from the site file."""

    spec: BillingSpec
    tariff: Tariff | None


def billing_of(config: SiteConfig) -> Billing:
    """The site's billing settings and tariff (the defaults and no tariff when the site
    file has no ``billing:`` block); raise ConfigError for a bad tariff file."""
    spec = config.billing or BillingSpec()
    if spec.tariff_file is not None:
        return Billing(spec, load_tariff_file(spec.tariff_file, spec))
    if spec.tariff is not None:
        tariff, problems = tariff_problems(spec.tariff, ("billing", "tariff"), spec)
        assert tariff is not None, problems  # config.py's pass checked it
        return Billing(spec, tariff)
    return Billing(spec, None)
