"""The REST API against the real app: the e2e rig (CSMS, controller, simulated chargers
over WebSockets) with the API on a free port, a token that may change things and an
audit store (SQLite under tmp_path), and an httpx client speaking HTTP to it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e.conftest import SITE, Rig

from gridshare.app import build_app

TOKEN = "api-test-token-5f1c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class ApiRig(Rig):
    def __init__(self, protocol: str, data_dir: Path, *, site: str = SITE,
                 tokens: tuple[str, ...] = (TOKEN,), read_token: bool = False) -> None:
        super().__init__(protocol, site=site)
        options = dataclasses.replace(self.app.options, api_port=0, api_tokens=tokens,
                                      api_read_token=read_token, db_url=None,
                                      data_dir=data_dir)
        self.app = build_app(self.topology, options)
        self.http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        await super().start()
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.app.api_port}",
                                      timeout=10.0)

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        await super().stop()

    @property
    def client(self) -> httpx.AsyncClient:
        assert self.http is not None
        return self.http

    async def events(self, kind: str) -> list[dict[str, Any]]:
        """The audit log's events of one kind (after what is queued is written)."""
        import json

        store = self.app.store
        assert store is not None
        await store.flush()
        rows = await store.rows("events", limit=10_000)
        return [json.loads(r["payload"]) for r in rows if r["kind"] == kind]




@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[ApiRig]:
    r = ApiRig("ocpp1.6", tmp_path / "var")
    await r.start()
    try:
        yield r
    finally:
        await r.stop()
