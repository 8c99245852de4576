"""The operator interfaces over HTTP: the REST API (FastAPI on uvicorn), its live stream,
the dashboard's static files, Prometheus metrics.

``create_api`` builds the ASGI app of a running :class:`gridshare.app.GridshareApp`;
``ApiServer`` serves it with uvicorn inside the app's event loop. Imported lazily so that
``gridshare.api.models`` (the validated operator bodies, shared with the MQTT command
topic) does not pull in FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gridshare.api.app import create_api
    from gridshare.api.server import ApiServer

__all__ = ["ApiServer", "create_api"]


def __getattr__(name: str) -> Any:
    if name == "create_api":
        from gridshare.api.app import create_api

        return create_api
    if name == "ApiServer":
        from gridshare.api.server import ApiServer

        return ApiServer
    raise AttributeError(name)
