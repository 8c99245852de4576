"""``gridshare db upgrade`` and ``gridshare db current`` on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from gridshare.cli import app
from gridshare.migrations import head

from .test_migrations import _legacy_create_all, run_sync

runner = CliRunner()


def test_upgrade_then_current(db_url: str) -> None:
    before = runner.invoke(app, ["db", "current", "--db", db_url, "--json"])
    if db_url.startswith("sqlite"):  # no file yet: reported, and not created
        assert before.exit_code == 1
        assert "no database file" in before.stderr
        assert not Path(db_url.removeprefix("sqlite:///")).exists()
    else:  # an empty database: never migrated
        assert before.exit_code == 1
        assert json.loads(before.stdout)["revision"] == []
    done = runner.invoke(app, ["db", "upgrade", "--db", db_url])
    assert done.exit_code == 0, done.output
    assert f"at {head()} (head)" in done.stdout
    now = runner.invoke(app, ["db", "current", "--db", db_url, "--json"])
    assert now.exit_code == 0, now.output
    shown = json.loads(now.stdout)
    assert (shown["revision"], shown["head"], shown["up_to_date"]) == ([head()], head(), True)


def test_current_of_a_database_from_before_migrations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    run_sync(url, _legacy_create_all)
    result = runner.invoke(app, ["db", "current", "--db", url])
    assert result.exit_code == 1
    assert "not migrated" in result.stdout and "gridshare db upgrade" in result.stdout
    assert runner.invoke(app, ["db", "upgrade", "--db", url]).exit_code == 0
    assert runner.invoke(app, ["db", "current", "--db", url]).exit_code == 0


def test_default_database_is_under_the_data_dir(tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "gridshare.db").exists()


def test_bad_url_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade", "--db", "mysql://x/y", "--json"])
    assert result.exit_code == 2
    assert "only SQLite and PostgreSQL" in result.stderr
    assert json.loads(result.stdout)["error"] == "usage"


def test_unreachable_database_fails_and_hides_the_password() -> None:
    result = runner.invoke(app, ["db", "upgrade", "--db",
                                 "postgresql://gs:s3cret@127.0.0.1:1/x"])
    assert result.exit_code == 1
    assert "127.0.0.1:1" in result.stderr
    assert "s3cret" not in result.output
