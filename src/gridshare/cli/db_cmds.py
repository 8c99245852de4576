"""``gridshare db upgrade`` and ``gridshare db current``: the database schema's revision.

``gridshare serve`` upgrades the database itself when it starts; these commands do it
ahead of time (a deployment step, a PostgreSQL shared by several processes) and show where
a database stands. SQLAlchemy and alembic are imported when a command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

EPILOG = """\b
Exit codes:
  0  done (current: the database is at the newest revision)
  1  a run-time failure: the database cannot be reached, its tables differ
     from the migrations, or (current) it is behind or was never migrated
  2  bad input: usage, a --db URL that cannot be used"""

db_app = typer.Typer(name="db", help="The database: migrate it, show its schema revision.",
                     no_args_is_help=True, add_completion=False,
                     pretty_exceptions_enable=False, rich_markup_mode=None)

DbOption = Annotated[str | None, typer.Option(
    "--db", metavar="URL", help="Database URL: sqlite:///FILE or postgresql://USER@HOST/DB "
    "(default: sqlite under --data-dir).", show_default=False)]
DataDirOption = Annotated[Path | None, typer.Option(
    "--data-dir", metavar="DIR",
    help="Where the default database lives ($GRIDSHARE_DATA_DIR or ./var).",
    show_default=False)]
JsonOption = Annotated[bool, typer.Option(
    "--json", help="One JSON object on stdout: url, revision, head, up_to_date.")]


def _url(command: str, db: str | None, data_dir: Path | None, as_json: bool) -> str:
    from gridshare.cli.core_cmds import usage_error
    from gridshare.store import StoreError, default_url, normalise_url

    try:
        return normalise_url(db if db is not None else default_url(data_dir))
    except StoreError as exc:
        usage_error(f"db {command}", "--db", str(exc), as_json)


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _fail(command: str, url: str, exc: BaseException, as_json: bool) -> NoReturn:
    message = f"{type(exc).__name__}: {exc}".splitlines()[0]
    sys.stderr.write(f"gridshare db {command}: {_shown(url)}: {message}\n")
    if as_json:
        sys.stdout.write(json.dumps({"error": "database", "url": _shown(url),
                                     "message": message}) + "\n")
    raise typer.Exit(1)


def _report(url: str, revision: tuple[str, ...], as_json: bool, verb: str) -> bool:
    from gridshare.migrations import head

    newest = head()
    ok = revision == (newest,)
    if as_json:
        sys.stdout.write(json.dumps({"url": _shown(url), "revision": list(revision),
                                     "head": newest, "up_to_date": ok}) + "\n")
    elif ok:
        sys.stdout.write(f"{_shown(url)}: {verb} {newest} (head)\n")
    elif not revision:
        sys.stdout.write(f"{_shown(url)}: not migrated (head is {newest}: "
                         "run gridshare db upgrade)\n")
    else:
        sys.stdout.write(f"{_shown(url)}: at {', '.join(revision)} (head is {newest}: "
                         "run gridshare db upgrade)\n")
    return ok


def upgrade_cmd(db: DbOption = None, data_dir: DataDirOption = None,
                as_json: JsonOption = False) -> None:
    """Create or migrate the database to the newest schema (what serve does at start)."""
    import asyncio

    from gridshare.store import Store

    url = _url("upgrade", db, data_dir, as_json)

    async def run() -> tuple[str, ...]:
        store = Store(url)
        await store.start()
        await store.stop()
        return store.revision

    try:
        revision = asyncio.run(run())
    except Exception as exc:
        _fail("upgrade", url, exc, as_json)
    _report(url, revision, as_json, "at")


def current_cmd(db: DbOption = None, data_dir: DataDirOption = None,
                as_json: JsonOption = False) -> None:
    """Show the database's schema revision and whether it is the newest (changes nothing;
    a SQLite file that does not exist is not created)."""
    import asyncio

    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    from gridshare.migrations import current

    url = _url("current", db, data_dir, as_json)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not Path(parsed.database).exists():
        _fail("current", url, FileNotFoundError(f"no database file {parsed.database}"),
              as_json)

    async def run() -> tuple[str, ...]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                revision: Any = await conn.run_sync(current)
                return tuple(revision)
        finally:
            await engine.dispose()

    try:
        revision = asyncio.run(run())
    except Exception as exc:
        _fail("current", url, exc, as_json)
    if not _report(url, revision, as_json, "at"):
        raise typer.Exit(1)


db_app.command("upgrade", epilog=EPILOG)(upgrade_cmd)
db_app.command("current", epilog=EPILOG)(current_cmd)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
