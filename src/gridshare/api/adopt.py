"""Chargers that are not declared yet, through the API: listed (``GET /api/v1/pending``,
``GET /api/v1/chargers?registration=pending``) and adopted (``POST /api/v1/chargers``).

Adopting writes the charger into the site file (validated exactly as ``gridshare check``
validates it, a backup kept, replaced atomically: :mod:`gridshare.sitefile`) and applies the
new topology to the running site without a restart: the controller, its state and ledger
take the added charger and keep everything they know of the others
(:meth:`~gridshare.controller.loop.Controller.add_chargers`), and the CSMS accepts it from
then on (:meth:`~gridshare.adapters.ocpp.CentralSystem.declare`). Until it is online and
controlled it counts at its failsafe current, so a full group makes room first.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Depends, FastAPI, Request, Response
from pydantic import Field

from gridshare.adapters.ocpp import ChargerCredentials
from gridshare.api import schemas
from gridshare.api.problems import Problem, problem_responses
from gridshare.api.views import charger_view, dumps
from gridshare.config import ChargerSpec, ConfigError, Id, SiteConfig
from gridshare.core.additions import InDrZone, NotAnAddition, added_chargers
from gridshare.sitefile import SiteFileError, commit, prepare, writable_reason

if TYPE_CHECKING:
    from gridshare.api.views import LiveViews
    from gridshare.app import GridshareApp

log = logging.getLogger("gridshare.api")

Registration = Literal["declared", "pending", "all"]


class AdoptCharger(ChargerSpec):
    """``POST /api/v1/chargers``: a charger as the site file declares one, and the group it
    goes in. Only the fields given are written to the file (the others keep their
    defaults there too)."""

    group: Id = Field(description="The id of the group the charger is wired into.")


_KINDS = {"unknown-group": 404, "already-declared": 409, "not-writable": 409,
          "unreadable": 409}
"""SiteFileError kind -> status."""


def pending_list(app: GridshareApp) -> list[dict[str, Any]]:
    """Every charger the CSMS holds pending, oldest first, as the API shows them."""
    return [p.as_json() for p in app.csms.pending_chargers()]


def chargers_of(app: GridshareApp, views: LiveViews, registration: Registration) -> bytes:
    """``GET /api/v1/chargers?registration=``: the declared chargers (the cached view),
    the pending ones, or both."""
    if registration == "declared":
        return views.chargers()
    pending = pending_list(app)
    if registration == "pending":
        return dumps({"site": app.topology.site, "at": app.controller.clock.now().isoformat(),
                      "chargers": pending})
    body = json.loads(views.chargers())
    body["chargers"].extend(pending)
    return dumps(body)


def apply_additions(app: GridshareApp, config: SiteConfig) -> dict[str, str]:
    """Run ``config``'s topology, which only adds chargers to the running one: the
    controller first (it refuses anything else before changing a thing), then Home
    Assistant learns of them and the CSMS accepts each one. Returns charger id -> what
    the CSMS did with it."""
    added = app.controller.add_chargers(config.topology)
    app.topology = config.topology
    if app.homeassistant is not None:
        app.homeassistant.set_topology(config.topology)
    app.loads.add_stations(config.topology, added)
    done = {}
    for cid in added:
        charger = config.topology.chargers[cid]
        done[cid] = app.csms.declare(cid, ChargerCredentials(config.passwords.get(cid)),
                                     phases=charger.phases, v2x=charger.v2x)
    return done


def _as_written(value: Any) -> Any:
    """A body's values as an operator writes them in YAML: 32, not 32.0."""
    if isinstance(value, dict):
        return {k: _as_written(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_written(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _invalid(path: Path, exc: ConfigError) -> Problem:
    """The site file's problems as a 422, named at their place in the file."""
    errors = [{"loc": ["site_file", *([i.path] if i.path else [])],
               "msg": f"{path}{'' if i.line is None else f':{i.line}'}: {i.message}",
               "type": "site_file"} for i in exc.issues]
    first = exc.issues[0]
    more = f" (and {exc.count - 1} more)" if exc.count > 1 else ""
    where = f"{first.path}: " if first.path else ""
    return Problem(422, f"the site file with this charger is not valid: {where}"
                   f"{first.message}{more}; nothing was written", kind="invalid-site",
                   errors=errors)


def register(api: FastAPI, app: GridshareApp, views: LiveViews,
             write: Callable[..., None]) -> None:
    """Add ``GET /api/v1/pending`` and ``POST /api/v1/chargers`` to ``api``."""
    auth = api.state.auth
    lock = asyncio.Lock()
    """One change of the site file at a time."""

    @api.get("/api/v1/pending", tags=["chargers"], response_model=schemas.PendingChargers,
             responses=problem_responses(401),
             summary="Chargers that connected without being declared (held Pending)")
    async def pending(request: Request) -> Response:
        auth.require_read(request)
        body = {"at": app.controller.clock.now().isoformat(),
                "pending_unknown": app.csms.config.pending_unknown,
                "pending": pending_list(app)}
        return Response(dumps(body), media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    @api.post("/api/v1/chargers", tags=["operator"], dependencies=[Depends(write)],
              status_code=201, response_model=schemas.Charger,
              responses=problem_responses(401, 403, 404, 409, 422),
              summary="Declare a charger in a group (adopt a pending one, or ahead of it)")
    async def adopt(body: AdoptCharger) -> Response:
        async with lock:
            return await _adopt(body)

    async def _adopt(body: AdoptCharger) -> Response:
        cid, group = body.id, body.group
        if cid in app.topology.chargers:
            raise Problem(409, f"charger {cid!r} is already declared", kind="already-declared")
        if group not in app.topology.groups:
            raise Problem(404, f"unknown group {group!r}", kind="unknown-group")
        path = app.options.site_path
        reason = writable_reason(path)
        if reason is not None or path is None:
            raise Problem(409, f"cannot add charger {cid!r}: {reason}",
                          kind="site-file-not-writable")
        spec = _as_written(body.model_dump(mode="json", exclude_unset=True,
                                           exclude={"group"}))
        spec = {"id": cid, **spec}
        try:
            temp, config = await asyncio.to_thread(prepare, path, spec, group)
        except SiteFileError as exc:
            raise Problem(_KINDS.get(exc.kind, 409), f"cannot add charger {cid!r}: {exc}",
                          kind=exc.kind) from exc
        except ConfigError as exc:
            raise _invalid(path, exc) from exc
        try:
            added = added_chargers(app.topology, config.topology)
            if added != (cid,):
                raise NotAnAddition(f"it also adds {[a for a in added if a != cid]}")
        except InDrZone as exc:
            temp.unlink(missing_ok=True)
            raise Problem(409, f"cannot add charger {cid!r} live: {exc}",
                          kind="in-dr-zone") from exc
        except NotAnAddition as exc:
            temp.unlink(missing_ok=True)
            raise Problem(409, f"the site file {path} no longer describes the running site "
                          f"({exc}): restart gridshare to run it, then adopt the charger",
                          kind="site-file-changed") from exc
        try:
            backup = await asyncio.to_thread(commit, path, temp, app.controller.clock.now())
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise Problem(409, f"cannot write the site file {path}: {exc.strerror or exc}",
                          kind="site-file-not-writable") from exc
        done = apply_additions(app, config)
        log.warning("operator: charger %s adopted into group %s (site file %s, backup %s; "
                    "CSMS: %s)", cid, group, path, backup.name, done[cid])
        views.invalidate(cid)
        return Response(dumps(charger_view(app.controller, cid)), status_code=201,
                        media_type="application/json",
                        headers={"Location": f"/api/v1/chargers/{cid}"})


__all__ = ["AdoptCharger", "Registration", "apply_additions", "chargers_of", "register"]
