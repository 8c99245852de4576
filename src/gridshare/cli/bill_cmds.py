"""``gridshare bill``: interval energy and its cost per meter, charger or session.

Reads the site file (its ``billing:`` block: time zone, interval, tariff), reads the
readings of the range from the database, computes exact interval energy (core/billing),
prints it as CSV or JSON and writes it to the ``billing_intervals`` table. Only typer is
imported here; the database, pydantic and the core load when the command runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from gridshare.cli.core_cmds import (
    DEFAULT_MAX_SIZE,
    MaxSizeOpt,
    SiteArg,
    load_site_or_exit,
    report_problems,
    usage_error,
    write_problems,
)

if TYPE_CHECKING:
    from decimal import Decimal

    from gridshare.core.billing import BillLine, BillTotal

EPILOG = """\b
Exit codes:
  0  the bill is printed (flagged intervals are in it, with their flags)
  1  the database cannot be read or written
  2  bad input: usage (--from, --to, --db), or a site or tariff file that
     cannot be read or is invalid"""

PROGRESS_AFTER = 200
"""Ids: a bill of more shows a progress bar (on a terminal only)."""
MAX_RANGE = timedelta(days=366)
"""The longest range billed in one run."""
CHUNK = 20
"""Ids read, computed and written at a time (a month of 20 meters: 57,600 readings)."""
CSV_COLUMNS = ("kind", "id", "start", "end", "energy_kwh", "cost", "tariff_period", "flags")
CSV_DIRECTION = "direction"
"""The column added after ``flags`` when the bill has export lines (else left out, so a
bill without export registers is what it always was)."""


class By(StrEnum):
    meter = "meter"
    session = "session"
    charger = "charger"


class Format(StrEnum):
    csv = "csv"
    json = "json"


def parse_instant(text: str, zone: tzinfo) -> datetime | None:
    """ISO 8601 with an offset; a time without one is in the site's time zone."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return at.replace(tzinfo=zone) if at.tzinfo is None else at


def bill_cmd(
    site: SiteArg,
    from_: Annotated[str, typer.Option(
        "--from", metavar="ISO", help="Start of the range, e.g. 2026-11-01T00:00+01:00 (no "
        "offset: the site's billing time zone); on an interval boundary.",
        show_default=False)],
    to: Annotated[str, typer.Option(
        "--to", metavar="ISO", help="End of the range (excluded), as --from.",
        show_default=False)],
    by: Annotated[By, typer.Option(
        "--by", help="meter: AMI/house meters; charger: each charger's connectors "
        "summed; session: each charging session.")] = By.meter,
    db: Annotated[str | None, typer.Option(
        "--db", metavar="URL", help="Database URL (default: sqlite under "
        "$GRIDSHARE_DATA_DIR or ./var, as serve uses).", show_default=False)] = None,
    fmt: Annotated[Format, typer.Option(
        "--format", help="csv (a header, one row per interval, then the totals) or "
        "json.")] = Format.csv,
    save: Annotated[bool, typer.Option(
        "--save/--no-save", help="Write the intervals to the billing_intervals table.")
    ] = True,
    max_size: MaxSizeOpt = DEFAULT_MAX_SIZE,
) -> None:
    """Interval energy (15 minutes by default) and its cost under the site's time-of-use
    tariff, per meter, charger or session, e.g.
    gridshare bill site.yaml --from 2026-11-01 --to 2026-12-01 --by charger --format csv"""
    as_json = fmt is Format.json
    config = load_site_or_exit(site, max_size, as_json)
    from gridshare.billing_config import billing_of
    from gridshare.config import ConfigError

    try:
        billing = billing_of(config)
    except ConfigError as exc:
        spec_file = config.billing.tariff_file if config.billing is not None else None
        report_problems(spec_file or site, exc, as_json=as_json, error="invalid tariff file")
    spec = billing.spec
    zone = spec.zone
    start = parse_instant(from_, zone)
    end = parse_instant(to, zone)
    step = spec.interval_s
    for option, value, raw in (("--from", start, from_), ("--to", end, to)):
        if value is None:
            usage_error("bill", option, f"not an ISO date or time like 2026-11-01 or "
                        f"2026-11-01T00:00+01:00: {raw!r}", as_json)
        if value.timestamp() % step:
            usage_error("bill", option, f"{raw} is not on a {step // 60}-minute interval "
                        "boundary", as_json)
    assert start is not None and end is not None
    if end <= start:
        usage_error("bill", "--to", f"{to} is not after --from {from_}", as_json)
    if end - start > MAX_RANGE:
        usage_error("bill", "--to", f"at most {MAX_RANGE.days} days at a time (bill a year "
                    "in parts: the intervals are the same)", as_json)
    from gridshare.store import StoreError, default_url, normalise_url

    try:
        url = normalise_url(db or default_url())
    except StoreError as exc:
        usage_error("bill", "--db", str(exc), as_json)
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and (
            not parsed.database or not Path(parsed.database).is_file()):
        usage_error("bill", "--db", f"no database file {parsed.database!r} (give --db, or "
                    "set GRIDSHARE_DATA_DIR as for serve)", as_json)
    from sqlalchemy.exc import SQLAlchemyError

    from gridshare.store import StoreError

    writer = BillWriter(fmt, zone, by=by.value, start=start, end=end,
                        currency=spec.currency, interval_s=step)
    try:
        asyncio.run(_bill(url, by, start.astimezone(UTC), end.astimezone(UTC), billing, save,
                          writer))
    except (SQLAlchemyError, OSError, StoreError) as exc:
        message = f"cannot be used: {(str(exc) or type(exc).__name__).splitlines()[0]}"
        where = parsed.render_as_string()  # the password hidden
        write_problems(Path(where), [f"gridshare bill: the database {where} {message}"],
                       [{"file": None, "line": None, "path": "--db", "message": message}], 1,
                       as_json=as_json, error="database")
        raise typer.Exit(1) from exc
    writer.copy_to(sys.stdout)


async def _bill(url: str, by: By, start: datetime, end: datetime, billing: Any,
                save: bool, writer: BillWriter) -> None:
    """Read, compute, write to the database (one transaction) and to ``writer``, id by id."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from gridshare import billing_store as bs
    from gridshare.billing_store import to_us
    from gridshare.core.billing import Flag, bill_each

    if save:  # billing_intervals as serve makes it: the store's own start-up migrates
        from gridshare.store import Store

        store = Store(url)  # a revision this version does not know: StoreError
        await store.start()
        await store.stop()
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            ids = await bs.subjects(conn, by.value, start, end)
            if save:
                await bs.clear_intervals(conn, by.value, ids, start, end)
            now = datetime.now(UTC)
            settings = billing.spec.settings()
            done = 0
            with _progress(len(ids)) as tick:
                for first in range(0, len(ids), CHUNK):
                    chunk = ids[first:first + CHUNK]
                    readings = await bs.readings_of(conn, by.value, chunk, start, end)
                    pending: list[BillLine] = []
                    for computed, total in bill_each(readings, to_us(start), to_us(end),
                                                     settings, billing.tariff,
                                                     billing.spec.cost_decimals):
                        # before and after a session: no session then, not missing data
                        lines = computed if by is not By.session else \
                            [x for x in computed if Flag.NO_DATA not in x.flags]
                        writer.add(lines, total)
                        if save:
                            pending.extend(lines)
                    if pending:
                        await bs.insert_intervals(conn, by.value, pending, now)
                    done += len(chunk)
                    if tick is not None:
                        tick(done)
    finally:
        await engine.dispose()


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr, when it is a terminal and the bill is long."""
    if total < PROGRESS_AFTER or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("billing", total=total)
        yield lambda done: bar.update(task, completed=done)


# --- output -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 16)
def _iso(us: int, zone: tzinfo) -> str:
    """Every id has the same interval boundaries: each is formatted once."""
    return datetime.fromtimestamp(us / 1_000_000, zone).isoformat()


class BillWriter:
    """The bill as text, written as it is computed into a spooled file (memory up to
    8 MB, then disk) and copied to stdout once the database transaction is committed.

    JSON: the shape of issue 11 (``intervals``, ``totals``) plus ``by``, ``from``, ``to``,
    ``currency`` and ``interval_minutes``; one interval and one total per line. CSV: a
    header, one ``interval`` row per interval, then one ``total`` row per id (its start
    and end are the range's); flags separated by ``;`` (docs/billing.md).

    Export lines (an id with an export register) carry ``"direction": "export"`` in JSON,
    and that id's total ``export_energy_kwh`` and ``export_cost``; import lines keep
    their shape. In CSV a bill with export lines gains a last column ``direction``
    (``import``/``export``, also on the totals: one total row per id and direction)."""

    def __init__(self, fmt: Format, zone: tzinfo, *, by: str, start: datetime,
                 end: datetime, currency: str | None, interval_s: int) -> None:
        self.fmt = fmt
        self.zone = zone
        self.first = start.astimezone(zone).isoformat()
        self.last = end.astimezone(zone).isoformat()
        self.out = tempfile.SpooledTemporaryFile(max_size=8 << 20, mode="w+",  # noqa: SIM115
                                                 encoding="utf-8", newline="")
        self.totals: list[BillTotal] = []
        self.count = 0
        self.exports = False
        """Whether any line is an export line (CSV: the direction column is added)."""
        if fmt is Format.json:
            head = {"by": by, "from": self.first, "to": self.last, "currency": currency,
                    "interval_minutes": interval_s // 60}
            self.out.write(json.dumps(head)[:-1] + ', "intervals": [')
        else:
            # the header is written by copy_to, once it is known whether there is export
            self.csv = csv.writer(self.out, lineterminator="\n")

    def add(self, lines: list[BillLine], total: BillTotal) -> None:
        from gridshare.core.billing.money import decimal_text, kwh_text

        zone = self.zone
        if self.fmt is Format.json:
            dumps = json.dumps
            for x in lines:
                # by hand, not json.dumps(dict), which would write the numbers via floats:
                # they are exact decimal text, so a parser reads exactly the digits shown
                sep = ",\n  " if self.count else "\n  "
                cost = "null" if x.cost is None else decimal_text(x.cost)
                direction = ', "direction": "export"' if x.direction == "export" else ""
                self.out.write(
                    f'{sep}{{"id": {dumps(x.id)}, "start": "{_iso(x.start_us, zone)}", '
                    f'"end": "{_iso(x.end_us, zone)}", "energy_kwh": {kwh_text(x.energy_mwh)}, '
                    f'"cost": {cost}, "tariff_period": {dumps(x.tariff_period)}, '
                    f'"flags": {dumps([str(f) for f in x.flags])}{direction}}}')
                self.count += 1
        else:
            # export rows have the direction column; import rows get theirs in copy_to
            self.csv.writerows(
                ("interval", x.id, _iso(x.start_us, zone), _iso(x.end_us, zone),
                 kwh_text(x.energy_mwh), "" if x.cost is None else decimal_text(x.cost),
                 x.tariff_period or "", ";".join(x.flags),
                 *(("export",) if x.direction == "export" else ())) for x in lines)
        self.exports = self.exports or total.export_energy_mwh is not None
        self.totals.append(total)

    def finish(self) -> None:
        from gridshare.core.billing.money import decimal_text, kwh_text

        def money(cost: Decimal | None, none: str) -> str:
            return none if cost is None else decimal_text(cost)

        if self.fmt is Format.json:
            totals = ",\n  ".join(
                f'{{"id": {json.dumps(t.id)}, "energy_kwh": {kwh_text(t.energy_mwh)}, '
                f'"cost": {money(t.cost, "null")}'
                + ("" if t.export_energy_mwh is None else
                   f', "export_energy_kwh": {kwh_text(t.export_energy_mwh)}, '
                   f'"export_cost": {money(t.export_cost, "null")}') + "}"
                for t in self.totals)
            self.out.write(("\n]" if self.count else "]") + ', "totals": ['
                           + (f"\n  {totals}\n]" if totals else "]") + "}\n")
        else:
            self.csv.writerows(("total", t.id, self.first, self.last, kwh_text(t.energy_mwh),
                                money(t.cost, ""), "", "") for t in self.totals)
            self.csv.writerows(("total", t.id, self.first, self.last,
                                kwh_text(t.export_energy_mwh), money(t.export_cost, ""), "",
                                "", "export") for t in self.totals
                               if t.export_energy_mwh is not None)

    def copy_to(self, target: IO[str]) -> None:
        self.finish()
        self.out.seek(0)
        if self.fmt is Format.csv:
            out = csv.writer(target, lineterminator="\n")
            if not self.exports:  # byte for byte what a bill without export always was
                out.writerow(CSV_COLUMNS)
            else:
                out.writerow((*CSV_COLUMNS, CSV_DIRECTION))
                out.writerows(row if len(row) > len(CSV_COLUMNS) else (*row, "import")
                              for row in csv.reader(self.out))
                self.out.close()
                return
        shutil.copyfileobj(self.out, target)
        self.out.close()


def register(app: typer.Typer) -> None:
    app.command("bill", epilog=EPILOG)(bill_cmd)


__all__ = ["BillWriter", "bill_cmd", "parse_instant", "register"]
