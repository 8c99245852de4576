"""Serve the API with uvicorn inside the app's own event loop.

Not ``uvicorn.run`` nor ``Server.serve``: those install their own signal handlers, and
``gridshare serve`` owns SIGINT/SIGTERM (it stops every part in order). The socket is bound
here, so a port in use is an ``OSError`` like the OCPP port's, and port 0 picks a free one
(:attr:`ApiServer.port` tells which).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn
from fastapi import FastAPI

from gridshare.api.stream import StreamHub
from gridshare.api.views import LiveViews

log = logging.getLogger("gridshare.api")


class ApiServer:
    def __init__(self, api: FastAPI, *, graceful_s: int = 3) -> None:
        self.api = api
        self.graceful_s = graceful_s
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        config = uvicorn.Config(self.api, lifespan="off", log_config=None, access_log=False,
                                timeout_graceful_shutdown=self.graceful_s,
                                server_header=False)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server, self._socket = server, sock
        self._task = asyncio.create_task(server.main_loop(), name="gridshare-api")

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("not started")
        port: int = self._socket.getsockname()[1]
        return port

    async def stop(self) -> None:
        """End the live streams, then stop accepting and let answers in progress finish."""
        hub = getattr(self.api.state, "hub", None)
        if isinstance(hub, StreamHub):
            await hub.close()
        views = getattr(self.api.state, "views", None)
        if isinstance(views, LiveViews):
            views.close()
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None:
            return
        server.should_exit = True
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await server.shutdown(sockets=[self._socket] if self._socket else None)
        except Exception:
            log.exception("API server did not shut down cleanly")
        self._socket = None
