"""The whole system on each database: CSMS, controller and simulated chargers over OCPP
with the audit store on SQLite or on PostgreSQL (``--db postgresql://…`` end to end); and
``gridshare serve`` refusing, with a clear line, a database it cannot open or adopt."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

from e2e.conftest import Rig
from typer.testing import CliRunner

from gridshare.app import build_app
from gridshare.cli import app as cli
from gridshare.store import Store

SITE_FILE = Path(__file__).resolve().parents[2] / "src/gridshare/examples/carport.yaml"


async def test_cars_charge_and_everything_is_recorded(db_url: str) -> None:
    rig = Rig("ocpp1.6")
    rig.app = build_app(rig.topology, dataclasses.replace(rig.app.options, db_url=db_url))
    await rig.start()
    try:
        rig.plug("e-1")
        rig.plug("e-2")
        await rig.wait_until(lambda: rig.offered("e-1") == rig.offered("e-2") == 12.5, 15.0)
        await rig.settle()
        rig.unplug("e-1")
        await rig.settle()
        store = rig.app.store
        assert store is not None
        await store.flush()
        assert store.failed_batches == 0 and store.dropped == 0
        counts = {t: await store.count(t) for t in
                  ("events", "sessions", "setpoint_commands", "decisions", "meter_readings")}
        assert all(counts.values()), counts
        increases = [c for c in await store.commands(charger="e-2", limit=1000)
                     if c["current_a"] == 12.5]
        assert increases and increases[0]["result"] == "accepted"
        sessions = {s["charger"]: s for s in await store.sessions()}
        assert sessions["e-1"]["stopped_at"] is not None
        assert sessions["e-2"]["stopped_at"] is None
        sent = [json.loads(d["detail"])["sent"]
                for d in await store.rows("decisions", limit=1000)]
        assert any(s["charger"] == "e-2" and s["current_a"] == 12.5 for ss in sent for s in ss)
    finally:
        await rig.stop()
    again = Store(db_url)  # and it is all there for the next start
    await again.start()
    try:
        assert await again.count("sessions") == 2
    finally:
        await again.stop()


def test_serve_refuses_an_unreachable_database_in_one_line() -> None:
    result = CliRunner().invoke(cli, ["serve", str(SITE_FILE), "--ocpp-port", "0",
                                      "--api-port", "-1", "--db",
                                      "postgresql://gs:s3cret@127.0.0.1:1/grid"])
    assert result.exit_code == 1
    assert "cannot start: database postgresql+asyncpg://gs:***@127.0.0.1:1/grid cannot be " \
        "opened or migrated: ConnectionRefusedError" in result.output
    assert "s3cret" not in result.output
    assert "Traceback" not in result.output


def test_serve_refuses_a_foreign_database_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, note TEXT)")
    result = CliRunner().invoke(cli, ["serve", str(SITE_FILE), "--ocpp-port", "0",
                                      "--api-port", "-1", "--db", f"sqlite:///{path}"])
    assert result.exit_code == 1
    assert "no migration history, and they differ from 0001_initial" in result.output
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master "
                                             "WHERE type = 'table'")}
    assert tables == {"events"}
