"""Fixtures for storage tests: every test that takes ``db_url`` runs on SQLite (a file in
tmp) and on a real PostgreSQL (a fresh database on the session's throwaway server)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pg import PgCluster, pg_cluster, pg_url

__all__ = ["db_url", "pg_cluster", "pg_url"]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gridshare.db'}"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.create_db()
