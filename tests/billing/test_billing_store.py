"""The billing_intervals migrations (0003, then 0005's cost_decimal) make exactly the
table billing_store.py defines, and adopt one ``gridshare bill`` made or extended first."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

from gridshare import store
from gridshare.billing_store import billing_intervals, ensure_table

VERSIONS = Path(store.__file__).parent / "migrations" / "versions"
MIGRATION = VERSIONS / "0003_intervals.py"
COST_EXACT = VERSIONS / "0005_cost_exact.py"


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


def test_migration_matches_the_table_and_is_idempotent(tmp_path: Path) -> None:
    module = _migration()
    assert module.revision == "0003_intervals"  # type: ignore[attr-defined]
    assert module.down_revision == "0002_aggregates"  # type: ignore[attr-defined]
    migrated = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    cost_exact = _migration(COST_EXACT)
    assert cost_exact.down_revision == "0004_bus"  # type: ignore[attr-defined]
    with migrated.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        module.upgrade()  # type: ignore[attr-defined]
        module.upgrade()  # type: ignore[attr-defined]  # a table bill made first: adopted
        cost_exact.upgrade()  # type: ignore[attr-defined]
        cost_exact.upgrade()  # type: ignore[attr-defined]  # a column bill added: adopted
    modelled = sa.create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    billing_intervals.create(modelled)
    assert _shape(migrated) == _shape(modelled)
    with migrated.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        cost_exact.downgrade()  # type: ignore[attr-defined]
        assert "cost_decimal" not in {c["name"] for c in
                                      sa.inspect(conn).get_columns("billing_intervals")}
        module.downgrade()  # type: ignore[attr-defined]
    assert not sa.inspect(migrated).has_table("billing_intervals")


def test_bill_adds_cost_decimal_to_a_table_from_before_it(tmp_path: Path) -> None:
    """A database migrated to 0004 (its table without cost_decimal) billed by this
    version: the column is added, keeping the rows, and 0005 then adopts it."""
    old = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with old.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        _migration().upgrade()  # type: ignore[attr-defined]
        conn.execute(sa.text(
            "INSERT INTO billing_intervals (by, subject, interval_start, interval_end, "
            "energy_mwh, cost, flags, computed_at) VALUES ('meter', 'm', '2026-11-01', "
            "'2026-11-01', 1, 0.5, '', '2026-11-01')"))
    with old.begin() as conn:
        ensure_table(conn)
        ensure_table(conn)
    with old.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        _migration(COST_EXACT).upgrade()  # type: ignore[attr-defined]
    modelled = sa.create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    billing_intervals.create(modelled)
    assert _shape(old) == _shape(modelled)
    with old.begin() as conn:
        assert conn.execute(sa.text("SELECT cost, cost_decimal FROM billing_intervals")
                            ).all() == [(0.5, None)]


def test_the_table_is_on_the_store_metadata() -> None:
    assert store.metadata.tables["billing_intervals"] is billing_intervals
