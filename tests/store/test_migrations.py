"""The migrations make exactly the schema of the models, on SQLite and PostgreSQL; a
database from before migrations is adopted; the chain of revisions is one line."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from gridshare import migrations
from gridshare.migrations import INITIAL, LEGACY_TABLES, SchemaError
from gridshare.store import Store, metadata


def sync_url(url: str) -> str:
    """The same database through a synchronous driver, for inspecting it from a test."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(False)
    return parsed.set(drivername="sqlite").render_as_string(False)


def run_sync(url: str, fn):  # type: ignore[no-untyped-def]
    """``fn(connection)`` on the database at ``url`` (asyncpg through SQLAlchemy's sync
    facade is not available: run it on an async engine)."""
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    from gridshare.store import normalise_url

    async def go():  # type: ignore[no-untyped-def]
        engine = create_async_engine(normalise_url(url))
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_revisions_form_one_chain_starting_at_initial() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrations.alembic_config())
    revisions = list(script.walk_revisions())  # head first
    assert revisions[-1].revision == INITIAL
    assert revisions[-1].down_revision is None
    for newer, older in itertools.pairwise(revisions):
        assert newer.down_revision == older.revision
    assert migrations.head() == revisions[0].revision


def test_migrations_make_exactly_the_models_schema(db_url: str) -> None:
    """alembic's comparison finds nothing: every table, column, type and index of
    ``store.metadata`` and nothing else. Fails when a table is changed in the models
    without a migration (or the other way round)."""
    assert run_sync(db_url, migrations.upgrade) == (migrations.head(),)
    assert run_sync(db_url, migrations.diff) == []
    tables = set(run_sync(db_url, lambda c: inspect(c).get_table_names()))
    assert tables == set(metadata.tables) | {"alembic_version"}


def test_the_comparison_sees_a_missing_index_and_column(db_url: str) -> None:
    """The schema test above can fail: a dropped index and column are both reported."""
    run_sync(db_url, migrations.upgrade)

    def damage(conn):  # type: ignore[no-untyped-def]
        conn.execute(text("DROP INDEX ix_alarms_at"))
        conn.execute(text("ALTER TABLE alarms DROP COLUMN phase"))

    run_sync(db_url, damage)
    found = {migrations._describe(d) for d in run_sync(db_url, migrations.diff)}
    assert found == {"add index ix_alarms_at", "add column alarms.phase"}


def test_upgrade_twice_is_a_no_op(db_url: str) -> None:
    first = run_sync(db_url, migrations.upgrade)
    assert run_sync(db_url, migrations.upgrade) == first


def test_downgrade_to_nothing_and_up_again(db_url: str) -> None:
    from alembic import command

    run_sync(db_url, migrations.upgrade)
    run_sync(db_url, lambda c: command.downgrade(migrations.alembic_config(c), "base"))
    assert run_sync(db_url, lambda c: inspect(c).get_table_names()) == ["alembic_version"]
    run_sync(db_url, migrations.upgrade)
    assert run_sync(db_url, migrations.diff) == []


def _legacy_create_all(conn) -> None:  # type: ignore[no-untyped-def]
    """What gridshare did before migrations: create_all of the initial tables."""
    metadata.create_all(conn, tables=[metadata.tables[t] for t in LEGACY_TABLES])


def test_a_database_from_create_all_is_stamped_and_keeps_its_rows(db_url: str) -> None:
    run_sync(db_url, _legacy_create_all)
    run_sync(db_url, lambda c: c.execute(text(
        "INSERT INTO alarms (at, kind, message, cleared) "
        "VALUES ('2026-01-01 00:00:00+00:00', 'limit', 'old', false)")))
    assert run_sync(db_url, migrations.current) == ()
    assert run_sync(db_url, migrations.upgrade) == (migrations.head(),)
    assert run_sync(db_url, migrations.diff) == []
    assert run_sync(db_url, lambda c: c.execute(
        text("SELECT message FROM alarms")).scalar_one()) == "old"


def test_a_database_from_before_the_export_register_gets_it(db_url: str) -> None:
    """A create_all database made before 0006 lacks energy_export_wh: it is adopted as
    0001 (not refused) and 0006 adds the column, rows kept."""
    run_sync(db_url, _legacy_create_all)
    for table in ("meter_readings", "ami_readings"):
        run_sync(db_url, lambda c, t=table: c.execute(text(
            f"ALTER TABLE {t} DROP COLUMN energy_export_wh")))
    run_sync(db_url, lambda c: c.execute(text(
        "INSERT INTO meter_readings (at, charger, connector, energy_wh) "
        "VALUES ('2026-01-01 00:00:00+00:00', 'cp1', 1, 5.0)")))
    assert run_sync(db_url, migrations.upgrade) == (migrations.head(),)
    assert run_sync(db_url, migrations.diff) == []
    assert run_sync(db_url, lambda c: c.execute(text(
        "SELECT energy_wh, energy_export_wh FROM meter_readings")).one()) == (5.0, None)


def test_a_damaged_old_database_is_refused_not_stamped(db_url: str) -> None:
    run_sync(db_url, _legacy_create_all)
    run_sync(db_url, lambda c: c.execute(text("DROP TABLE dr_events")))
    run_sync(db_url, lambda c: c.execute(text("ALTER TABLE alarms DROP COLUMN phase")))
    with pytest.raises(SchemaError) as caught:
        run_sync(db_url, migrations.upgrade)
    message = str(caught.value)
    assert "table dr_events is missing" in message
    assert "alarms.phase" in message
    assert run_sync(db_url, migrations.current) == ()


async def test_store_start_migrates_to_head(db_url: str) -> None:
    store = Store(db_url)
    await store.start()
    try:
        assert store.revision == (migrations.head(),)
    finally:
        await store.stop()


def test_services_starting_together_on_new_sqlite_files_all_start(tmp_path: Path) -> None:
    """Switching a new file to WAL needs it to itself, and SQLite refuses at once
    ("database is locked", no busy handler) while another connection holds it: three
    stores on one new file failed about one round in two before the switch was retried.
    Thirty rounds, each on a fresh file, every store must start in WAL mode."""
    import asyncio

    async def round_on(path: Path) -> set[str]:
        stores = [Store(f"sqlite:///{path}") for _ in range(3)]
        try:
            results = await asyncio.gather(*(s.start() for s in stores),
                                           return_exceptions=True)
            assert [r for r in results if r is not None] == []
            modes = set()
            for store in stores:
                assert store._engine is not None
                async with store._engine.connect() as conn:
                    modes.add(str((await conn.execute(
                        text("PRAGMA journal_mode"))).scalar_one()))
            return modes
        finally:
            for store in stores:
                await store.stop()

    for n in range(30):
        assert asyncio.run(round_on(tmp_path / f"g{n}.db")) == {"wal"}


def test_sqlite_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    import asyncio

    url = f"sqlite:///{tmp_path / 'g.db'}"

    async def go() -> tuple[str, int]:
        store = Store(url)
        await store.start()
        try:
            assert store._engine is not None
            async with store._engine.connect() as conn:
                mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
                sync = (await conn.execute(text("PRAGMA synchronous"))).scalar_one()
                return str(mode), int(sync)
        finally:
            await store.stop()

    assert asyncio.run(go()) == ("wal", 2)  # 2: FULL
    engine = create_engine(sync_url(url))  # WAL is a property of the file: it stays
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    engine.dispose()


async def test_processes_starting_together_on_an_empty_database_both_migrate(
        db_url: str) -> None:
    """Two stores (two processes in production: controllers scaled out on one
    PostgreSQL) upgrading the same empty database at once: both start, one schema."""
    import asyncio

    stores = [Store(db_url), Store(db_url), Store(db_url)]
    try:
        await asyncio.gather(*(s.start() for s in stores))
        assert {s.revision for s in stores} == {(migrations.head(),)}
        assert stores[0]._engine is not None
        async with stores[0]._engine.connect() as conn:
            assert await conn.run_sync(migrations.diff) == []
    finally:
        for s in stores:
            await s.stop()
