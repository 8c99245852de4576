"""The REST API of a running site (FastAPI): reads, operator changes, the live stream,
the dashboard's files, the interactive docs (served from the package, no internet).

Changes go through the control loop: an override is published on the bus as an event
(``LimitChanged`` with source ``operator``, ``PriorityChanged``), the controller folds it
in and re-allocates, the store records it in the audit log. The route answers once the
controller holds it, so the answer (and every read after it) shows the change.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import AwareDatetime
from starlette.types import ASGIApp, Receive, Scope, Send

from gridshare import __version__
from gridshare.api import adopt, schemas
from gridshare.api.adopt import Registration, chargers_of
from gridshare.api.auth import Auth
from gridshare.api.models import LimitOverride, PriorityOverride
from gridshare.api.problems import Problem, install, problem_response, problem_responses
from gridshare.api.stream import StreamHub
from gridshare.api.views import LiveViews, alarm_dict, charger_view, dumps
from gridshare.events import LimitChanged, PriorityChanged

if TYPE_CHECKING:
    from gridshare.app import GridshareApp

log = logging.getLogger("gridshare.api")

STATIC_DIR = Path(__file__).parent / "static"
APPLY_TIMEOUT_S = 5.0
"""How long a change may take to reach the controller before the answer says so (503)."""

DESCRIPTION = """\
Operate a gridshare site: the group tree with load against limit, the chargers, sessions,
commands and alarms; override a group's limit or a charger's priority; follow it live.

**Auth.** Every change needs `Authorization: Bearer <token>` (tokens from `gridshare serve
--api-token-file FILE` or `GRIDSHARE_API_TOKEN`). Reads are open unless the site file says
`api: {read_token: true}`; then reads need the token too (in the header, or
`?access_token=` for the stream). **Errors** are `application/problem+json`.

**Stream.** `GET /api/v1/stream` sends server-sent events `site`, `chargers` (same JSON as
the GET endpoints) and `alarm` (one alarm), on every change and at least once a second.
"""

_bearer = HTTPBearer(auto_error=False, description="A token of --api-token-file or "
                     "GRIDSHARE_API_TOKEN.")


class _Json(Response):
    media_type = "application/json"


def create_api(app: GridshareApp, tokens: tuple[str, ...] | list[str] = (), *,
               read_token: bool = False) -> FastAPI:
    """The ASGI app serving ``app``: see the module docstring and docs/api.md."""
    api = FastAPI(title="gridshare", version=__version__, description=DESCRIPTION,
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    install(api)
    auth = Auth(tokens, read_token=read_token)
    views = LiveViews(app)
    hub = StreamHub(views)
    api.state.gridshare = app
    api.state.auth = auth
    api.state.views = views
    api.state.hub = hub
    controller = app.controller

    def read(request: Request) -> None:
        auth.require_read(request)

    def write(request: Request, _creds: Annotated[Any, Depends(_bearer)]) -> None:
        auth.require_write(request)

    Read = Depends(read)
    Write = Depends(write)

    # --- docs, offline --------------------------------------------------------------------

    from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

    api.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @api.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="gridshare API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png")

    # --- the dashboard --------------------------------------------------------------------

    api.mount("/static", StaticFiles(directory=str(STATIC_DIR), check_dir=False),
              name="static")

    @api.get("/", include_in_schema=False, response_model=None)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html",
                                headers={"Cache-Control": "no-cache"})
        return JSONResponse({"status": "/status", "api": "/api/v1/site", "docs": "/docs"})

    # --- reads ----------------------------------------------------------------------------

    async def status(request: Request) -> Response:
        auth.require_read(request)
        body = views.status()
        if request.method == "HEAD":
            return Response(headers={"Content-Length": str(len(body)),
                                     "Cache-Control": "no-store"},
                            media_type="application/json")
        return Response(body, media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    api.add_api_route("/status", status, methods=["GET"], tags=["status"],
                      summary="The controller's status (groups, connectors, alarms, meters)",
                      response_class=_Json, response_model=None, responses={
                          200: {"content": {"application/json": {"schema": {
                              "type": "object"}}}}, **problem_responses(401)})
    for path, methods in (("/status", ["HEAD"]), ("/status/", ["GET", "HEAD"])):
        api.add_api_route(path, status, methods=methods, include_in_schema=False,
                          response_model=None)

    @api.get("/api/v1/site", tags=["site"], dependencies=[Read],
             response_model=schemas.Site, responses=problem_responses(401),
             summary="The group tree, each group with its load against its limits")
    async def site(request: Request) -> Response:
        return _view(request, views, "site")

    @api.get("/api/v1/chargers", tags=["chargers"], dependencies=[Read],
             response_model=schemas.Chargers, responses=problem_responses(401),
             summary="Every charger: status, connection, connectors, setpoints, sessions")
    async def chargers(request: Request, registration: Annotated[Registration, Query(
            description="declared (the default), pending (connected without being "
            "declared) or all")] = "declared") -> Response:
        if registration != "declared":
            return _Json(chargers_of(app, views, registration),
                         headers={"Cache-Control": "no-store"})
        return _view(request, views, "chargers")

    def known_charger(charger_id: str) -> str:
        if charger_id not in app.topology.chargers:  # the running one: adoption adds
            raise Problem(404, f"unknown charger {charger_id!r}", kind="unknown-charger")
        return charger_id

    def known_group(group_id: str) -> str:
        if group_id not in app.topology.groups:
            raise Problem(404, f"unknown group {group_id!r}", kind="unknown-group")
        return group_id

    @api.get("/api/v1/chargers/{charger_id}", tags=["chargers"], dependencies=[Read],
             response_model=schemas.Charger, responses=problem_responses(401, 404),
             summary="One charger")
    async def charger(charger_id: Annotated[str, PathParam(max_length=256)]) -> Response:
        return _Json(dumps(charger_view(controller, known_charger(charger_id))))

    async def store_or_none() -> Any:
        store = app.store
        if store is None:
            return None
        try:  # what was recorded until now is in the answer
            async with asyncio.timeout(1.0):
                await store.flush()
        except TimeoutError:
            pass
        return store

    def no_store(what: str) -> Problem:
        return Problem(503, f"no {what}: gridshare serve runs without an audit store "
                       "(--db none)", kind="no-audit-store")

    @api.get("/api/v1/sessions", tags=["history"], dependencies=[Read],
             response_model=schemas.Sessions, responses=problem_responses(401, 422, 503),
             summary="Sessions with their energy (those overlapping [from, to))")
    async def sessions(
        from_: Annotated[AwareDatetime | None, Query(
            alias="from", description="ISO time with offset: sessions still running at or "
            "after it.")] = None,
        to: Annotated[AwareDatetime | None, Query(
            description="ISO time with offset: sessions started before it.")] = None,
        charger: Annotated[str | None, Query(max_length=256)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> Response:
        store = await store_or_none()
        if store is None:
            raise no_store("session history")
        rows = await store.sessions(since=from_, until=to, charger=charger, limit=limit)
        now = controller.clock.now()

        def energy(row: dict[str, Any]) -> float | None:
            if row["stopped_at"] is not None:
                return row["energy_wh"]  # type: ignore[no-any-return]
            key = (row["charger"], row["connector"])
            if not _has_connector(app, key):
                return None
            info = controller.state.session_info(key)  # running: delivered so far
            return info.energy_wh if info.transaction_id == row["transaction_id"] else None

        out = [{
            "charger": r["charger"], "connector": r["connector"],
            "transaction_id": r["transaction_id"], "id_tag": r["id_tag"] or None,
            "started": _iso(r["started_at"]), "stopped": _iso(r["stopped_at"]),
            "meter_start_wh": r["meter_start_wh"], "meter_stop_wh": r["meter_stop_wh"],
            "energy_wh": energy(r),
            "stop_reason": r["stop_reason"] or None,
        } for r in rows]
        return _Json(dumps({"at": now.isoformat(), "sessions": out}))

    @api.get("/api/v1/commands", tags=["history"], dependencies=[Read],
             response_model=schemas.Commands, responses=problem_responses(401, 422, 503),
             summary="The latest setpoint and failsafe commands with their outcome")
    async def commands(
        charger: Annotated[str | None, Query(max_length=256)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> Response:
        store = await store_or_none()
        if store is None:
            raise no_store("command history")
        rows = await store.commands(charger=charger, limit=limit)
        out = [{"at": _iso(r["at"]), "charger": r["charger"], "connector": r["connector"],
                "kind": r["kind"], "current": r["current_a"], "previous": r["previous_a"],
                "result": r["result"], "latency_ms": round(r["latency_ms"], 3)}
               for r in rows]
        return _Json(dumps({"commands": out}))

    @api.get("/api/v1/alarms", tags=["history"], dependencies=[Read],
             response_model=schemas.Alarms, responses=problem_responses(401, 422),
             summary="Alarms raised or cleared since a time, newest first")
    async def alarms(
        since: Annotated[AwareDatetime | None, Query(
            description="ISO time with offset (default: every alarm kept)")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> Response:
        store = await store_or_none()
        if store is None:  # the controller's own recent alarms
            recent = [a for a in reversed(controller.recent_alarms)
                      if since is None or a.at >= since][:limit]
            out = [alarm_dict(a) for a in recent]
        else:
            out = [{"at": _iso(r["at"]), "kind": r["kind"], "group": r["group_id"],
                    "phase": r["phase"], "load": r["load"], "limit": r["limit_value"],
                    "message": r["message"], "cleared": r["cleared"]}
                   for r in await store.alarms(since=since, limit=limit)]
        return _Json(dumps({"alarms": out}))

    # --- changes --------------------------------------------------------------------------

    async def applied(check: Any, what: str) -> None:
        """Wait until the controller holds the change (it arrives through the bus)."""
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while not check():
            if time.monotonic() > deadline:
                raise Problem(503, f"{what} was published but the controller has not taken "
                              f"it within {APPLY_TIMEOUT_S:g} s", kind="not-applied")
            await asyncio.sleep(0.002)
        views.invalidate()

    @api.put("/api/v1/groups/{group_id}/limit", tags=["operator"], dependencies=[Write],
             response_model=schemas.Group, responses=problem_responses(401, 403, 404, 422),
             summary="Override a group's limit (null everywhere removes the override)")
    async def group_limit(group_id: Annotated[str, PathParam(max_length=256)],
                          body: LimitOverride) -> Response:
        known_group(group_id)
        now = controller.clock.now()
        problem = body.problem_at(now)
        if problem is not None:
            raise Problem(422, f"body.until: {problem}", kind="validation-error", errors=[
                {"loc": ["body", "until"], "msg": problem, "type": "value_error"}])
        event = LimitChanged(group_id, now, "operator", body.max_current, body.max_power,
                             body.until, reason="operator override (API)")
        app.bus.publish(event)
        log.warning("operator: group %s limit %s", group_id, _describe(body))

        def holds() -> bool:
            got = controller.state.limits_of(group_id, controller.clock.now()).get("operator")
            if body.removes:
                return got is None
            return got is not None and (got[0].max_current, got[0].max_power_kw, got[1]) == (
                body.max_current, body.max_power, body.until)

        await applied(holds, f"the override of group {group_id}")
        return _Json(dumps(_find_group(views.site(), group_id)))

    @api.put("/api/v1/chargers/{charger_id}/priority", tags=["operator"],
             dependencies=[Write], response_model=schemas.Charger,
             responses=problem_responses(401, 403, 404, 422),
             summary="Set a charger's priority at run time (null restores the site file's)")
    async def charger_priority(charger_id: Annotated[str, PathParam(max_length=256)],
                               body: PriorityOverride) -> Response:
        known_charger(charger_id)
        app.bus.publish(PriorityChanged(charger_id, controller.clock.now(), body.priority))
        log.warning("operator: charger %s priority %s", charger_id,
                    "as configured" if body.priority is None else body.priority)
        await applied(lambda: controller.state.priority_override(charger_id) == body.priority,
                      f"the priority of charger {charger_id}")
        return _Json(dumps(charger_view(controller, charger_id)))

    # --- demand response (issue 9) ----------------------------------------------------------

    from gridshare.api.dr import create_router as dr_router

    api.include_router(dr_router(lambda: getattr(app, "dr", None), app.clock, write, read,
                                 store=lambda: getattr(app, "store", None)))

    from gridshare.api.zones import create_router as zones_router

    api.include_router(zones_router(lambda: app.loads, read))

    from gridshare.api.plan import create_router as plan_router

    api.include_router(plan_router(lambda: getattr(app, "planning", None), app.topology,
                                   write, read))

    from gridshare.api.frequency import create_router as frequency_router

    api.include_router(frequency_router(lambda: getattr(app, "frequency", None), read))

    from gridshare.api.demand import create_router as demand_router

    api.include_router(demand_router(lambda: getattr(app, "telemetry", None), read))

    from gridshare.api.v2g import create_router as v2g_router

    api.include_router(v2g_router(lambda: app, write))

    # --- live -----------------------------------------------------------------------------

    @api.get("/api/v1/stream", tags=["site"], dependencies=[Read],
             response_class=StreamingResponse, responses={
                 200: {"description": "Server-sent events: `site`, `chargers`, `alarm`.",
                       "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                 **problem_responses(401)},
             summary="Live updates (server-sent events)")
    async def stream() -> StreamingResponse:
        return StreamingResponse(hub.subscribe(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    adopt.register(api, app, views, write)

    try:  # Prometheus /metrics, when that module is there
        metrics = importlib.import_module("gridshare.api.metrics")
    except ModuleNotFoundError as exc:
        if exc.name != "gridshare.api.metrics":
            raise
    else:
        metrics.register(api, app)
    api.add_middleware(WriteGuard, auth=auth)
    return api


class WriteGuard:
    """Every request that is not a read needs a valid bearer token, checked before the
    body is even read (so a client without one learns nothing from a 422)."""

    SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in self.SAFE:
            try:
                self.auth.require_write(Request(scope))
            except Problem as exc:
                response = problem_response(exc.status, exc.detail, kind=exc.kind,
                                            headers=exc.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _view(request: Request, views: LiveViews, name: str) -> Response:
    """A cached view, gzipped when the client takes it (browsers, curl --compressed)."""
    headers = {"Cache-Control": "no-store", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        return _Json(views.gzipped(name), headers={**headers, "Content-Encoding": "gzip"})
    return _Json(views.site() if name == "site" else views.chargers(), headers=headers)


def _has_connector(app: GridshareApp, key: tuple[str, int]) -> bool:
    charger = app.topology.chargers.get(key[0])
    return charger is not None and any(c.key == key for c in charger.connectors)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _describe(body: LimitOverride) -> str:
    if body.removes:
        return "override removed"
    parts = []
    if body.max_current is not None:
        parts.append(f"{body.max_current:g} A")
    if body.max_power is not None:
        parts.append(f"{body.max_power:g} kW")
    if body.until is not None:
        parts.append(f"until {body.until.isoformat()}")
    return " ".join(parts)


def _find_group(site_json: bytes, group_id: str) -> dict[str, Any]:
    import json

    stack = list(json.loads(site_json)["groups"])
    while stack:
        group: dict[str, Any] = stack.pop()
        if group["id"] == group_id:
            return group
        stack.extend(group["children"])
    raise Problem(404, f"unknown group {group_id!r}", kind="unknown-group")
