"""The billing_intervals migration makes exactly the table billing_store.py defines."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

from gridshare import store
from gridshare.billing_store import billing_intervals

MIGRATION = Path(store.__file__).parent / "migrations" / "versions" / "0003_intervals.py"


def _migration() -> object:
    spec = importlib.util.spec_from_file_location("m0003", MIGRATION)
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
    with migrated.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        module.upgrade()  # type: ignore[attr-defined]
        module.upgrade()  # type: ignore[attr-defined]  # a table bill made first: adopted
    modelled = sa.create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    billing_intervals.create(modelled)
    assert _shape(migrated) == _shape(modelled)
    with migrated.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        module.downgrade()  # type: ignore[attr-defined]
    assert not sa.inspect(migrated).has_table("billing_intervals")


def test_the_table_is_on_the_store_metadata() -> None:
    assert store.metadata.tables["billing_intervals"] is billing_intervals
