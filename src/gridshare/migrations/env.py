"""Alembic's environment for gridshare: migrates the connection it is handed.

``gridshare.migrations.upgrade`` (used by ``Store.start`` and ``gridshare db upgrade``)
passes an open connection in ``config.attributes["connection"]``; run from the alembic
command line instead (``alembic -x url=sqlite:///var/gridshare.db upgrade head`` with a
config whose ``script_location`` is ``gridshare:migrations``), this opens the URL itself.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from gridshare.migrations import configure_context
from gridshare.store import normalise_url


def _run(connection: Connection) -> None:
    configure_context(context, connection)
    with context.begin_transaction():
        context.run_migrations()


def _from_url() -> None:
    url = context.get_x_argument(as_dictionary=True).get("url") \
        or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("gridshare migrations: give the database as -x url=<URL>")

    async def run() -> None:
        engine = create_async_engine(normalise_url(url))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_run)
        finally:
            await engine.dispose()

    asyncio.run(run())


if context.is_offline_mode():
    raise SystemExit("gridshare migrations run online only (against a database)")
connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    _from_url()
