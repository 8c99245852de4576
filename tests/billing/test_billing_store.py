"""The billing_intervals migrations (0003, 0005's cost_decimal, 0007's direction) make
exactly the table billing_store.py defines; they adopt a table or column an older
``gridshare bill`` made itself; and ``bill --save`` brings an older database to the
current schema (as serve does), keeping its rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

from gridshare import migrations, store
from gridshare.billing_store import billing_intervals

VERSIONS = Path(store.__file__).parent / "migrations" / "versions"
MIGRATION = VERSIONS / "0003_intervals.py"
COST_EXACT = VERSIONS / "0005_cost_exact.py"
DIRECTION = VERSIONS / "0007_billing_direction.py"


def _migration(path: Path = MIGRATION) -> object:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shape(engine: sa.Engine) -> tuple[list[tuple[str, str, bool]], list[tuple[str, ...]]]:
    inspector = sa.inspect(engine)
    columns = [(c["name"], str(c["type"]), bool(c["nullable"]))
               for c in inspector.get_columns("billing_intervals")]
    indexes = sorted((i["name"], *i["column_names"], str(bool(i["unique"])))
                     for i in inspector.get_indexes("billing_intervals"))
    return columns, indexes


def test_migrations_match_the_table_adopt_what_bill_made_and_go_back(tmp_path: Path) -> None:
    module, cost_exact, direction = (_migration(), _migration(COST_EXACT),
                                     _migration(DIRECTION))
    assert module.revision == "0003_intervals"  # type: ignore[attr-defined]
    assert module.down_revision == "0002_aggregates"  # type: ignore[attr-defined]
    assert cost_exact.down_revision == "0004_bus"  # type: ignore[attr-defined]
    assert direction.down_revision == "0006_export_register"  # type: ignore[attr-defined]
    migrated = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with migrated.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        module.upgrade()  # type: ignore[attr-defined]
        module.upgrade()  # type: ignore[attr-defined]  # a table bill made first: adopted
        cost_exact.upgrade()  # type: ignore[attr-defined]
        cost_exact.upgrade()  # type: ignore[attr-defined]  # a column bill added: adopted
        direction.upgrade()  # type: ignore[attr-defined]
    modelled = sa.create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    billing_intervals.create(modelled)
    assert _shape(migrated) == _shape(modelled)
    with migrated.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        conn.execute(sa.text(
            "INSERT INTO billing_intervals (by, subject, interval_start, interval_end, "
            "energy_mwh, flags, computed_at, direction) VALUES "
            "('meter', 'm', '2026-11-01', '2026-11-01', 1, '', '2026-11-01', 'import'), "
            "('meter', 'm', '2026-11-01', '2026-11-01', 2, '', '2026-11-01', 'export')"))
        direction.downgrade()  # type: ignore[attr-defined]  # the export row has no place
        assert conn.execute(sa.text("SELECT energy_mwh FROM billing_intervals")).all() == \
            [(1,)]
        cost_exact.downgrade()  # type: ignore[attr-defined]
        assert "cost_decimal" not in {c["name"] for c in
                                      sa.inspect(conn).get_columns("billing_intervals")}
        module.downgrade()  # type: ignore[attr-defined]
    assert not sa.inspect(migrated).has_table("billing_intervals")


def test_an_older_database_is_migrated_and_its_rows_become_import_lines(
        tmp_path: Path) -> None:
    """A database at 0006 (no direction) with a stored interval: after the upgrade the
    row is an import line, and an export line of the same interval fits beside it."""
    old = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with old.begin() as conn:
        migrations.upgrade(conn, "0006_export_register")
        conn.execute(sa.text(
            "INSERT INTO billing_intervals (by, subject, interval_start, interval_end, "
            "energy_mwh, cost, cost_decimal, flags, computed_at) VALUES ('meter', 'm', "
            "'2026-11-01', '2026-11-01', 1, 0.5, '0.5', '', '2026-11-01')"))
    with old.begin() as conn:
        assert migrations.upgrade(conn) == (migrations.head(),)
        conn.execute(sa.text(
            "INSERT INTO billing_intervals (by, subject, interval_start, interval_end, "
            "energy_mwh, flags, computed_at, direction) VALUES ('meter', 'm', "
            "'2026-11-01', '2026-11-01', 7, '', '2026-11-01', 'export')"))
        assert conn.execute(sa.text(
            "SELECT direction, energy_mwh, cost_decimal FROM billing_intervals ORDER BY id")
        ).all() == [("import", 1, "0.5"), ("export", 7, None)]


def test_the_table_is_on_the_store_metadata() -> None:
    assert store.metadata.tables["billing_intervals"] is billing_intervals
