"""``gridshare bill`` on PostgreSQL: the same seeded readings give the same bill as on
SQLite, and the intervals are stored. A throwaway cluster on a free port, its socket in
its own directory; a missing binary fails the test (never skips)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import free_port
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

from gridshare.billing_store import billing_intervals
from gridshare.cli import app

from .test_bill_cli import SITE, _seed

INITDB = "/usr/local/bin/initdb"
POSTGRES = "/usr/local/bin/postgres"


def _as_user() -> list[str]:
    """initdb and postgres refuse root: run them as ``postgres`` (or ``nobody``)."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return ["runuser", "-u", name, "--"]
    pytest.fail("running as root and no postgres or nobody user to run PostgreSQL as")


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    for binary in (INITDB, POSTGRES):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} not found: the PostgreSQL test needs the server binaries")
    work = Path(tempfile.mkdtemp(prefix="gridshare-bill-pg-"))
    prefix = _as_user()
    if prefix:
        shutil.chown(work, user=prefix[2])
    data, port = work / "data", free_port()
    subprocess.run([*prefix, INITDB, "-D", str(data), "-U", "postgres", "-A", "trust",
                    "--no-sync"], check=True, capture_output=True, timeout=120)
    log = (work / "log").open("wb")
    proc = subprocess.Popen([*prefix, POSTGRES, "-D", str(data), "-p", str(port), "-k",
                             str(work), "-h", "127.0.0.1", "-c", "fsync=off"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                asyncio.run(_ping(url))
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"PostgreSQL did not start: {(work / 'log').read_text()}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


async def _ping(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=2)
    await conn.close()


def _async(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://")


def test_bill_on_postgresql_matches_sqlite(pg_url: str, tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    sqlite_url = f"sqlite:///{tmp_path / 'gridshare.db'}"
    asyncio.run(_seed(_async(pg_url)))
    asyncio.run(_seed(sqlite_url.replace("sqlite://", "sqlite+aiosqlite://")))
    runner = CliRunner()
    outputs = []
    for url in (pg_url, sqlite_url):
        for by in ("meter", "charger", "session"):
            result = runner.invoke(app, ["bill", str(site), "--from", "2026-11-03T06:00",
                                         "--to", "2026-11-03T08:00", "--by", by, "--db", url,
                                         "--format", "json"])
            assert result.exit_code == 0, result.stderr
            outputs.append(result.stdout)
    assert outputs[:3] == outputs[3:]
    assert '"cp-1/tx-9", "energy_kwh": 2.333' in outputs[2]

    async def stored() -> Any:
        engine = create_async_engine(_async(pg_url))
        async with engine.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(
                billing_intervals))).scalar_one()
        await engine.dispose()
        return count

    assert asyncio.run(stored()) == 3 * 8 + 8 + 6  # meters, one charger, one session
