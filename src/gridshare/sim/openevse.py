"""A simulated OpenEVSE box: the WiFi firmware's HTTP API on a local port and its MQTT
status topics on a real broker, with a car that draws min(pilot, the car's maximum).

What it reproduces of the firmware (openevse_esp32_firmware, ``evse_man.cpp``,
``current_shaper.cpp``, ``web_server_claims.cpp``):

- claims: ``POST /claims/<client>`` stores ``state`` / ``charge_current`` /
  ``max_current`` / ``auto_release`` at the API priority (500) and answers 200
  ``{"msg":"done"}``; ``GET /claims/target`` gives the evaluated target; per property the
  claim of highest priority wins; the pilot is the smallest of the box's maximum,
  ``max_current`` and ``charge_current``, never below 6 A; ``auto_release`` claims go when
  the car leaves;
- the current shaper (when enabled): ``POST /status {"shaper_live_pwr": W}`` feeds it; a
  box never fed, or not fed for ``current_shaper_data_maxinterval`` seconds, pauses the
  charge with a claim of higher priority (1100) than any API claim: the failsafe;
- ``GET /status``, ``GET /config``; HTTP basic auth when a username is set;
- MQTT: ``<base>/amp`` (mA), ``voltage``, ``power`` (W), ``pilot``, ``state`` (1 no car,
  2 connected, 3 charging, 254 sleeping), ``vehicle``, ``session_energy`` (Wh),
  ``total_energy`` (kWh) every ``publish_s`` and ``<base>/status`` online, with an
  ``offline`` will.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gridshare.tasks import cancel_and_wait, raise_if_cancelled

log = logging.getLogger("gridshare.sim.openevse")

PRIORITY_API = 500
PRIORITY_SHAPER_FAILSAFE = 1100
PRIORITY_SHAPER = 5000
MIN_A = 6


@dataclass
class Claim:
    priority: int
    state: str | None = None
    charge_current: int | None = None
    max_current: int | None = None
    auto_release: bool = False

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"priority": self.priority}
        for key in ("state", "charge_current", "max_current"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["auto_release"] = self.auto_release
        return out


@dataclass
class SimOpenEvse:
    """One box. ``start()`` serves HTTP on ``http_port`` (0: a free one) and publishes to
    the broker at ``broker_host:broker_port`` under ``base``."""

    base: str
    broker_host: str
    broker_port: int
    max_current: int = 32
    voltage: float = 230.0
    phases: int = 1
    username: str | None = None
    password: str | None = None
    shaper_enabled: bool = True
    shaper_maxinterval_s: float = 120.0
    shaper_max_pwr: float = 100_000.0
    publish_s: float = 1.0
    http_delay_s: float = 0.0
    """Delay before every HTTP answer (a slow or hung box)."""
    clock: Callable[[], float] = time.monotonic
    claims: dict[int, Claim] = field(default_factory=dict)
    plugged: bool = False
    car_max_a: float = 0.0
    total_wh: float = 0.0
    session_wh: float = 0.0
    shaper_fed_at: float | None = None
    shaper_live_pwr: float = 0.0
    requests: list[tuple[str, str]] = field(default_factory=list)
    """(method, path) of every HTTP request, in order."""

    def __post_init__(self) -> None:
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_tick = self.clock()
        self._last_amps = 0.0
        self.app = self._build_app()

    # --- the box's logic -----------------------------------------------------------------

    def shaper_failsafe(self) -> bool:
        """The shaper pauses the charge: enabled and not fed within its interval."""
        if not self.shaper_enabled:
            return False
        return self.shaper_fed_at is None or \
            self.clock() - self.shaper_fed_at > self.shaper_maxinterval_s

    def all_claims(self) -> dict[int, Claim]:
        out = dict(self.claims)
        if self.shaper_enabled:
            if self.shaper_failsafe():
                out[0x10003] = Claim(PRIORITY_SHAPER_FAILSAFE, state="disabled")
            else:
                # the firmware adds the box's own draw (its live power includes it)
                amps = (self.shaper_max_pwr - self.shaper_live_pwr) / self.voltage / \
                    self.phases + self._last_amps
                out[0x10003] = Claim(PRIORITY_SHAPER, max_current=max(0, math.floor(amps)))
        return out

    def target(self) -> tuple[dict[str, Any], dict[str, int]]:
        """The evaluated properties and which client won each (``GET /claims/target``)."""
        props: dict[str, Any] = {"state": "active"}
        won: dict[str, int] = {}
        best: dict[str, int] = {}
        for client, claim in self.all_claims().items():
            for key in ("state", "charge_current", "max_current"):
                value = getattr(claim, key)
                if value is not None and claim.priority > best.get(key, 0):
                    props[key], best[key], won[key] = value, claim.priority, client
        return props, won

    def state_active(self) -> bool:
        return bool(self.target()[0]["state"] == "active")

    def pilot(self) -> int:
        props, _ = self.target()
        amps = self.max_current
        for key in ("max_current", "charge_current"):
            if key in props:
                amps = min(amps, int(props[key]))
        return max(amps, MIN_A)

    def amps(self) -> float:
        """What the car draws now (A per phase)."""
        if not self.plugged or not self.state_active():
            return 0.0
        return float(min(self.pilot(), self.car_max_a))

    def evse_state(self) -> int:
        if not self.state_active():
            return 254
        if not self.plugged:
            return 1
        return 3 if self.amps() > 0 else 2

    def plug(self, car_max_a: float) -> None:
        self.tick()
        self.plugged, self.car_max_a, self.session_wh = True, car_max_a, 0.0

    def unplug(self) -> None:
        self.tick()
        self.plugged = False
        self.claims = {c: k for c, k in self.claims.items() if not k.auto_release}

    def reboot(self) -> None:
        """A restart: claims (kept in RAM) are gone, the shaper is unfed (paused)."""
        self.tick()
        self.claims = {}
        self.shaper_fed_at = None

    def tick(self) -> None:
        now = self.clock()
        wh = self.amps() * self.voltage * self.phases * (now - self._last_tick) / 3600.0
        self.total_wh += wh
        self.session_wh += wh
        self._last_tick = now
        self._last_amps = self.amps()

    def status_json(self) -> dict[str, Any]:
        self.tick()
        amps = self.amps()
        return {"amp": round(amps * 1000), "voltage": self.voltage, "pilot": self.pilot(),
                "power": round(amps * self.voltage * self.phases), "state": self.evse_state(),
                "vehicle": int(self.plugged), "session_energy": round(self.session_wh, 1),
                "total_energy": round(self.total_wh / 1000.0, 4),
                "shaper": int(self.shaper_enabled), "shaper_live_pwr": self.shaper_live_pwr,
                "shaper_updated": not self.shaper_failsafe()}

    # --- HTTP ----------------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        if self.username is None:
            return True
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return secrets.compare_digest(user, self.username) and \
            secrets.compare_digest(pw, self.password or "")

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def auth(request: Request, call_next: Any) -> Any:
            self.requests.append((request.method, request.url.path))
            if self.http_delay_s:
                await asyncio.sleep(self.http_delay_s)
            if not self._authorised(request):
                return JSONResponse({"msg": "unauthorized"}, status_code=401,
                                    headers={"WWW-Authenticate": 'Basic realm="openevse"'})
            return await call_next(request)

        @app.get("/status")
        async def get_status() -> dict[str, Any]:
            return self.status_json()

        @app.post("/status")
        async def post_status(request: Request) -> JSONResponse:
            try:
                body = await request.json()
            except ValueError:
                return JSONResponse({"msg": "Could not parse JSON"}, status_code=400)
            if isinstance(body, dict) and isinstance(body.get("shaper_live_pwr"), int | float):
                self.tick()
                self.shaper_live_pwr = float(body["shaper_live_pwr"])
                self.shaper_fed_at = self.clock()
            return JSONResponse({"msg": "done"})

        @app.get("/config")
        async def get_config() -> dict[str, Any]:
            return {"current_shaper_enabled": self.shaper_enabled,
                    "current_shaper_data_maxinterval": self.shaper_maxinterval_s,
                    "current_shaper_max_pwr": self.shaper_max_pwr,
                    "max_current_soft": self.max_current, "mqtt_topic": self.base,
                    "www_username": self.username or ""}

        @app.get("/claims/target")
        async def get_target() -> dict[str, Any]:
            props, won = self.target()
            return {"properties": {**props, "auto_release": False}, "claims": won}

        @app.get("/claims")
        async def get_claims() -> list[dict[str, Any]]:
            return [{"client": c, **k.as_json()} for c, k in self.all_claims().items()]

        @app.api_route("/claims/{client}", methods=["GET", "POST", "DELETE"])
        async def claim(client: str, request: Request) -> JSONResponse:
            try:
                cid = int(client)
            except ValueError:
                cid = 0
            if request.method == "GET":
                found = self.all_claims().get(cid)
                return (JSONResponse(found.as_json()) if found is not None
                        else JSONResponse({"msg": "Not found"}, status_code=404))
            if cid == 0:
                return JSONResponse({"msg": "Method not allowed"}, status_code=405)
            if request.method == "DELETE":
                self.tick()
                if self.claims.pop(cid, None) is None:
                    return JSONResponse({"msg": "Not found"}, status_code=404)
                return JSONResponse({"msg": "done"})
            try:
                body = await request.json()
            except ValueError:
                return JSONResponse({"msg": "Could not parse JSON"}, status_code=400)
            if not isinstance(body, dict):
                return JSONResponse({"msg": "Could not parse JSON"}, status_code=400)
            self.tick()
            new = Claim(PRIORITY_API)
            if body.get("state") in ("active", "disabled"):
                new.state = body["state"]
            for key in ("charge_current", "max_current"):
                if isinstance(body.get(key), int | float):
                    setattr(new, key, int(body[key]))  # the firmware keeps uint32 amps
            new.auto_release = bool(body.get("auto_release", False))
            self.claims[cid] = new
            return JSONResponse({"msg": "done"})

        return app

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def http_port(self) -> int:
        assert self._socket is not None, "not started"
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def start(self, port: int = 0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.setblocking(False)
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False,
                                timeout_graceful_shutdown=1)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server, self._socket = server, sock
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(server.main_loop(), name=f"sim-openevse-http-{self.base}"),
                       loop.create_task(self._publish(), name=f"sim-openevse-mqtt-{self.base}")]

    async def stop(self) -> None:
        server = self._server
        if server is not None:
            server.should_exit = True
        await cancel_and_wait(self._tasks, swallow_errors=True)
        self._tasks = []
        if server is not None:
            with contextlib.suppress(Exception):
                await server.shutdown(sockets=[self._socket] if self._socket else None)
        self._server = None

    async def _publish(self) -> None:
        """Connect (again after a broker outage) and publish the status topics."""
        while True:
            try:
                will = aiomqtt.Will(f"{self.base}/status", "offline", qos=1, retain=True)
                async with aiomqtt.Client(self.broker_host, self.broker_port, will=will,
                                          timeout=5) as client:
                    await client.publish(f"{self.base}/status", "online", qos=1, retain=True)
                    while True:
                        for key, value in self.status_json().items():
                            if key in ("amp", "voltage", "power", "pilot", "state", "vehicle",
                                       "session_energy", "total_energy"):
                                await client.publish(f"{self.base}/{key}", str(value))
                        await asyncio.sleep(self.publish_s)
            except aiomqtt.MqttError as exc:
                raise_if_cancelled()
                log.debug("sim openevse %s: mqtt %s", self.base, exc)
                await asyncio.sleep(0.5)


async def _serve(box: SimOpenEvse, port: int, car_a: float | None) -> None:
    await box.start(port)
    if car_a is not None:
        box.plug(car_a)
    print(f"simulated OpenEVSE {box.base}: http://127.0.0.1:{box.http_port}, status on "
          f"mqtt://{box.broker_host}:{box.broker_port} under {box.base}/", flush=True)
    try:
        await asyncio.Event().wait()  # until Ctrl-C
    finally:
        await box.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m gridshare.sim.openevse``: one box until Ctrl-C."""
    import argparse
    from urllib.parse import urlsplit

    parser = argparse.ArgumentParser(prog="python -m gridshare.sim.openevse",
                                     description="A simulated OpenEVSE box.")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--base", default="openevse-sim", help="MQTT base topic")
    parser.add_argument("--port", type=int, default=8081, help="HTTP port (0: a free one)")
    parser.add_argument("--max-current", type=int, default=32)
    parser.add_argument("--shaper-interval", type=float, default=120.0,
                        help="current_shaper_data_maxinterval, seconds")
    parser.add_argument("--car", type=float, default=None,
                        help="plug in a car drawing up to this many A")
    parser.add_argument("--username", default=None)
    parser.add_argument("--password", default=None)
    args = parser.parse_args(argv)
    broker = urlsplit(args.broker)
    box = SimOpenEvse(args.base, broker.hostname or "127.0.0.1", broker.port or 1883,
                      max_current=args.max_current, shaper_maxinterval_s=args.shaper_interval,
                      username=args.username, password=args.password)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(box, args.port, args.car))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = ["Claim", "SimOpenEvse", "main"]
