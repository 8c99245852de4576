"""Without telemetry: /api/v1/ingest says so, /api/v1/demand is a 404 problem; the
OpenAPI document (with the telemetry routes) is valid."""

from __future__ import annotations

import httpx
from openapi_spec_validator import validate

from gridshare.app import build_app, serve_options
from gridshare.config import parse_site_config

SITE = """
site: plain
groups:
  - {id: main, max_current: 32, chargers: [cp-1]}
chargers:
  - {id: cp-1, max_current: 16}
"""


async def test_routes_without_telemetry() -> None:
    config = parse_site_config(SITE)
    app = build_app(config.topology, serve_options(config, host="127.0.0.1", ocpp_port=0,
                                                   api_port=0, db_url="none"))
    assert app.telemetry is None
    await app.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.api_port}") as client:
            r = await client.get("/api/v1/ingest")
            assert r.status_code == 200 and r.json() == {"enabled": False, "sources": {}}
            r = await client.get("/api/v1/demand", params={"level": "feeder"})
            assert r.status_code == 404
            assert r.json()["type"].endswith("telemetry-off")
            r = await client.get("/api/v1/demand", params={"level": "street"})
            assert r.status_code == 422
            spec = (await client.get("/openapi.json")).json()
            validate(spec)
            assert "/api/v1/demand" in spec["paths"] and "/api/v1/ingest" in spec["paths"]
            params = {p["name"] for p in spec["paths"]["/api/v1/demand"]["get"]["parameters"]}
            assert {"level", "key", "from", "to"} <= params
    finally:
        await app.stop()
