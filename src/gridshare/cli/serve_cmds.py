"""``gridshare serve`` (the live system) and ``gridshare demo`` (it, with simulated chargers).

The live system (OCPP, websockets, the controller, SQLAlchemy, the simulator) is imported
inside the commands, not here: ``gridshare --help`` and the core commands must not pay
for it at start-up.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    from rich.console import Console, Group

    from gridshare.app import GridshareApp, ServeOptions
    from gridshare.core.topology import Topology

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
SERVE_EPILOG = """\b
Exit codes:
  0  stopped cleanly on SIGINT or SIGTERM
  1  could not start (a port in use, an address not available)
  2  bad input: usage, a site file that cannot be read or is invalid, a bad
     --db or --bus URL, an --api-token-file that cannot be read or holds no
     token"""
DEMO_EPILOG = """\b
Exit codes:
  0  the demo ran for --duration seconds or was stopped by SIGINT or SIGTERM
  2  bad input: usage, an unknown --site"""


def _fail(message: str, code: int) -> typer.Exit:
    """Print a one-line error on stderr (never wrapped, whatever the terminal); the caller
    raises the returned Exit."""
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(message, highlight=False)
    return typer.Exit(code)


def _logging(level: str, fmt: str = "text") -> None:
    """One line per log record on stderr: plain logging, never rich's wrapping."""
    from gridshare.cli.logs import setup_logging

    setup_logging(level, fmt, sys.stderr)


def serve_cmd(
    site: Annotated[Path, typer.Argument(
        help="Site topology YAML file.", show_default=False, metavar="SITE")],
    host: Annotated[str, typer.Option(
        "--host", metavar="ADDRESS", help="Address to listen on.")] = "0.0.0.0",
    ocpp_port: Annotated[int, typer.Option(
        "--ocpp-port", metavar="PORT", help="OCPP WebSocket port; chargers connect to ws://HOST:PORT/<id>.")
    ] = 9000,
    api_port: Annotated[int, typer.Option(
        "--api-port", metavar="PORT", help="HTTP port of the REST API (/api/v1/..., docs at "
        "/docs), the dashboard (/) and GET /status; -1 disables it.")] = 8080,
    api_token_file: Annotated[Path | None, typer.Option(
        "--api-token-file", metavar="FILE", help="Bearer tokens that may change things "
        "through the API, one per line (blank and # lines ignored); also "
        "$GRIDSHARE_API_TOKEN. Without any, changes are refused.")] = None,
    db: Annotated[str | None, typer.Option(
        "--db", metavar="URL", help="Audit log database URL (default: sqlite under --data-dir; "
        "'none' disables it).")] = None,
    bus: Annotated[str, typer.Option(
        "--bus", metavar="URL", help="Event bus URL: memory:// (one process) or "
        "nats://HOST:PORT (NATS JetStream; several processes, see docs/scale-out.md).")
    ] = "memory://",
    role: Annotated[str, typer.Option(
        "--role", metavar="ROLE", help="all (CSMS and controller in one process), gateway "
        "(OCPP and meters, publishing to NATS) or controller (runs the site while it holds "
        "its lease); gateway and controller need a nats:// --bus.")] = "all",
    controller_id: Annotated[str | None, typer.Option(
        "--controller-id", metavar="ID", help="This controller's name in the site leases "
        "(default: host name and process id).")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", metavar="DIR",
        help="Where the default database lives ($GRIDSHARE_DATA_DIR or ./var).")
    ] = None,
    log_level: Annotated[str, typer.Option(
        "--log-level", metavar="LEVEL",
        help="debug, info, warning or error (logs go to stderr).")
    ] = "warning",
    log_format: Annotated[str, typer.Option(
        "--log-format", metavar="FORMAT",
        help="text (one line per event) or json (one object per line: ts, level, logger, "
        "message and the event's own fields).")] = "text",
    max_size: Annotated[int, typer.Option(
        "--max-size", min=1, metavar="BYTES",
        help="Refuse a site file larger than this, before reading it.")
    ] = 16 * 1024 * 1024,
) -> None:
    """Run the CSMS and the controller for a site until SIGINT or SIGTERM."""
    from gridshare.cli.core_cmds import report_problems
    from gridshare.config import ConfigError, load_site_config, site_warnings

    if log_level.lower() not in LOG_LEVELS:
        raise _fail(f"[red]--log-level must be one of {', '.join(LOG_LEVELS)}[/]", 2)
    if log_format.lower() not in LOG_FORMATS:
        raise _fail(f"[red]--log-format must be one of {', '.join(LOG_FORMATS)}[/]", 2)
    _logging(log_level, log_format.lower())
    try:
        config = load_site_config(site, max_size)
    except ConfigError as exc:
        report_problems(site, exc)
    import logging

    for warning in site_warnings(config):
        logging.getLogger("gridshare").warning("%s: %s", site, warning)
    # The live system is imported once the site file is known to be good: a typo in it
    # is reported without waiting for OCPP, the controller and the store to load.
    import asyncio

    from gridshare.adapters.nats.roles import LEASE_LOST_EXIT, ROLES, LeaseLost
    from gridshare.api.auth import TokenFileError, load_tokens
    from gridshare.app import serve, serve_options
    from gridshare.bus import BusError, open_bus
    from gridshare.store import StoreError, normalise_url

    if role not in ROLES:
        raise _fail(f"[red]--role must be one of {', '.join(ROLES)}[/]", 2)
    if role != "all" and not bus.startswith(("nats://", "tls://")):
        raise _fail(f"[red]--role {role} needs a nats:// --bus[/]", 2)
    try:
        open_bus(bus)
        if db is not None and db.lower() not in ("none", "off", ""):
            normalise_url(db)
        tokens = load_tokens(api_token_file)
    except (BusError, StoreError, TokenFileError) as exc:
        raise _fail(f"[red]{exc}[/]", 2) from exc
    options = serve_options(config, host=host, ocpp_port=ocpp_port,
                            api_port=None if api_port < 0 else api_port, db_url=db,
                            bus_url=bus, data_dir=data_dir, api_tokens=tokens,
                            site_path=site, role=role, controller_id=controller_id)
    try:
        asyncio.run(serve(config.topology, options))
    except StoreError as exc:  # the database cannot be opened or migrated
        from rich.markup import escape

        raise _fail(f"[red]cannot start: {escape(str(exc))}[/]", 1) from exc
    except LeaseLost as exc:
        raise _fail(f"[red]{exc}[/]", LEASE_LOST_EXIT) from exc
    except OSError as exc:
        raise _fail(f"[red]cannot start: {exc.strerror or exc}[/] "
                    f"(OCPP port {ocpp_port}, API port {api_port} on {host})", 1) from exc


# --- demo ---------------------------------------------------------------------------------


def demo_site_text(chargers: int) -> str:
    """The demo site for ``chargers`` chargers: 40 A circuits of five under a service of
    25 A per circuit (100 A for the default 20), every third charger 1-phase."""
    if chargers == 20:
        from importlib import resources

        return resources.files("gridshare").joinpath("examples/demo-site.yaml").read_text(
            encoding="utf-8")
    circuits = max(1, math.ceil(chargers / 5))
    lines = ["site: carport-demo", "voltage: 230", "policy: equal", "rotation_interval: 120",
             "groups:", "  - id: service",
             f"    max_current: {max(40, 25 * circuits)}", "    meter: building",
             "    groups:"]
    for c in range(circuits):
        ids = ", ".join(f"cp-{i + 1:02d}" for i in range(c * 5, min(chargers, c * 5 + 5)))
        lines.append(f"      - {{id: circuit-{c + 1}, max_current: 40, chargers: [{ids}]}}")
    lines += ["meters:", "  - {id: building, source: ocpp, charger: building-meter}",
              "chargers:"]
    for i in range(chargers):
        if i % 3 == 1:
            phase = ("L1", "L2", "L3")[(i // 3) % 3]
            lines.append(f"  - {{id: cp-{i + 1:02d}, max_current: 32, phases: 1, "
                         f"phase: {phase}, failsafe_current: 6}}")
        else:
            lines.append(f"  - {{id: cp-{i + 1:02d}, max_current: 32, phases: 3, "
                         f"failsafe_current: 0}}")
    return "\n".join(lines) + "\n"


BUILDING_LOAD_A = (14.0, 6.0, 9.0)
"""What the rest of the building draws through the service in the demo (A per phase)."""


@dataclass
class DemoStats:
    samples: int = 0
    worst: dict[str, float] = field(default_factory=dict)
    """Per group, the highest (drawn + building) / limit seen on any phase."""
    over_s: dict[str, float] = field(default_factory=dict)
    """Per group, seconds above its limit (cars take a few seconds to follow a cut)."""
    arrivals: int = 0
    departures: int = 0


def _group_draw(app: GridshareApp, sim: object, gid: str) -> tuple[float, float, float]:
    from gridshare.sim.site import SimSite

    assert isinstance(sim, SimSite)
    chargers = app.topology.subtree_chargers(gid)
    loads: tuple[str, ...] = ("building",) if app.topology.groups[gid].parent is None else ()
    return sim.meter_a(chargers, loads=loads)


def _tables(app: GridshareApp, sim: object, elapsed_s: float, duration_s: float) -> Group:
    from rich.console import Group
    from rich.table import Table

    from gridshare.sim.site import SimSite

    assert isinstance(sim, SimSite)
    status = app.controller.status()
    groups = Table(title=f"{app.topology.site}: load vs limit, t = {elapsed_s:.0f} / "
                         f"{duration_s:.0f} s", title_justify="left")
    for col in ("group", "L1 A", "L2 A", "L3 A", "limit A", "left for EVs A"):
        groups.add_column(col, justify="left" if col == "group" else "right")
    for g in status.groups:
        drawn = _group_draw(app, sim, g.id)
        limit = g.limit_a if g.limit_a is not None else math.inf
        cells = [f"[{'red' if a > limit + 0.5 else 'green'}]{a:5.1f}[/]" for a in drawn]
        groups.add_row(g.id, *cells, f"{limit:g}", "/".join(f"{a:.0f}" for a in g.available_a))
    chargers = Table(title="chargers (A per phase)", title_justify="left")
    for col in ("charger", "OCPP", "wiring", "status", "setpoint", "offered", "drawn"):
        chargers.add_column(col, justify="right" if col in ("setpoint", "offered", "drawn")
                            else "left")
    for view in status.connectors:
        ch = sim.chargers[view.charger]
        topo = app.topology.chargers[view.charger]
        line = topo.phase.name if topo.phase is not None else ""
        wiring = "3-ph" if topo.phases == 3 else f"1-ph {line}"
        setpoint = "—" if view.setpoint_a is None else f"{view.setpoint_a:.1f}"
        peak_a = max(ch.drawn_a(view.connector))
        chargers.add_row(view.charger, ch.ocpp_version, wiring,
                         ch.status(view.connector).value if ch.connected else "[red]offline",
                         setpoint, f"{ch.offered_a(view.connector):.1f}", f"{peak_a:.1f}")
    return Group(groups, chargers)


def _plain_line(app: GridshareApp, sim: object, elapsed_s: float) -> str:
    from gridshare.sim.site import SimSite

    assert isinstance(sim, SimSite)
    parts = [f"t={elapsed_s:4.0f}s"]
    for gid, group in app.topology.groups.items():
        drawn = _group_draw(app, sim, gid)
        parts.append(f"{gid} {max(drawn):.0f}/{group.max_current:g}A")
    status = app.controller.status()
    charging = sum(1 for c in status.connectors if (c.setpoint_a or 0) > 0 and c.active)
    waiting = sum(1 for c in status.connectors if c.active and not (c.setpoint_a or 0) > 0)
    parts.append(f"cars charging {charging}, waiting/paused {waiting}, "
                 f"chargers online {status.chargers_online}")
    return "  ".join(parts)


async def start_demo_app(topology: Topology, options: Callable[[int | None], ServeOptions],
                         api_port: int | None, token: str, console: Console) -> GridshareApp:
    """Build and start a demo's app with ``options(api_port)``; when that port is taken
    (another gridshare?) any free one will do. Prints the dashboard's address and the
    one-off token for changes."""
    from gridshare.app import build_app

    app = build_app(topology, options(api_port))
    try:
        await app.start()
    except OSError as exc:
        if not api_port:
            raise
        await app.stop()
        console.print(f"port {api_port} is taken ({exc.strerror or exc}): using a free one",
                      highlight=False)
        app = build_app(topology, options(0))
        await app.start()
    if api_port is not None:
        console.print(f"dashboard: http://127.0.0.1:{app.api_port}/  (token for changes: "
                      f"{token})", highlight=False)
    return app


async def run_demo(duration_s: float, seed: int, chargers: int, *, plain: bool,
                   console: Console, stop: asyncio.Event | None = None,
                   api_port: int | None = None) -> DemoStats:
    """Start a sample site, the CSMS and controller on free ports and simulated chargers
    whose cars come and go; show loads against limits until ``duration_s`` has passed.
    With ``api_port`` (0: a free one) the REST API and the dashboard are served too, on
    127.0.0.1, with a one-off token for changes printed at start."""
    import asyncio
    import contextlib

    from rich.live import Live

    from gridshare.app import ServeOptions
    from gridshare.config import parse_site_config
    from gridshare.controller.loop import ControllerSettings
    from gridshare.sim import SimCharger
    from gridshare.sim.site import ConstantLoad, Scenario, SimSite
    from gridshare.sim.site_meter import SimSiteMeter
    from gridshare.tasks import cancel_and_wait

    config = parse_site_config(demo_site_text(chargers), "demo-site.yaml")
    topology = config.topology
    settings = ControllerSettings(lease_s=120.0)
    import secrets
    import tempfile

    token = secrets.token_urlsafe(12)
    # The embedded defaults, as serve has them: an SQLite audit log (sessions and commands
    # for the dashboard), in a folder of its own that goes with the demo.
    data = tempfile.TemporaryDirectory(prefix="gridshare-demo-")

    def options(port: int | None) -> ServeOptions:
        return ServeOptions(host="127.0.0.1", ocpp_port=0, api_port=port,
                            data_dir=Path(data.name), controller=settings,
                            meters=config.meters, api_tokens=(token,))

    app = await start_demo_app(topology, options, api_port, token, console)
    url = f"ws://127.0.0.1:{app.ocpp_port}"
    sims = []
    for i, (cid, ch) in enumerate(topology.chargers.items()):
        sims.append(SimCharger(
            cid, url, protocol=("ocpp1.6", "ocpp2.0.1")[i % 2], phases=ch.phases,
            phase=ch.phase.name if ch.phase is not None else "L1", max_current_a=ch.max_current,
            min_current_a=ch.min_current, meter_interval_s=5.0, seed=seed))
    # Short stays so that arrivals and departures happen within the first minute.
    scenario = Scenario(seed=seed, arrivals_per_hour=150.0, dwell_mean_h=50 / 3600,
                        dwell_sigma=0.4, min_dwell_s=20.0, initial_occupancy=0.4,
                        max_currents_a=(16.0, 32.0), lag_range_s=(1.0, 3.0))
    sim = SimSite(sims, tick_s=0.5, scenario=scenario)
    sim.add_load("building", ConstantLoad(BUILDING_LOAD_A))
    stats = DemoStats()

    def on_event(_ch: object, _at: object, what: str) -> None:
        if what.startswith("plug"):
            stats.arrivals += 1
        elif what.startswith("unplug"):
            stats.departures += 1

    sim.listeners.append(on_event)
    stop = stop or asyncio.Event()

    async def sample() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            stats.samples += 1
            for gid, group in topology.groups.items():
                limit = group.max_current or math.inf
                ratio = max(_group_draw(app, sim, gid)) / limit
                stats.worst[gid] = max(stats.worst.get(gid, 0.0), ratio)
                if ratio > 1.0 + 0.5 / limit:
                    stats.over_s[gid] = stats.over_s.get(gid, 0.0) + (now - last)
            last = now

    # The building meter is a charge point of its own (``source: ocpp`` in the site file):
    # it reads what the service feeds, the rest of the building and every charger.
    (spec,) = [m for m in config.meters if m.id == topology.groups["service"].meter]
    assert spec.charger is not None
    meter = SimSiteMeter(spec.charger, url, lambda: _group_draw(app, sim, "service"),
                         interval_s=2.0)
    helpers: list[asyncio.Task[None]] = []
    started = time.monotonic()
    await meter.start()
    try:
        connected = await sim.start(wait_connected_s=15.0)
        if connected < len(sims):
            console.print(f"[yellow]{connected} of {len(sims)} chargers connected[/]")
        helpers.append(asyncio.create_task(sample(), name="demo-sample"))
        if plain or not console.is_terminal:
            next_line = 0.0
            while (elapsed := time.monotonic() - started) < duration_s and not stop.is_set():
                if elapsed >= next_line:
                    console.print(_plain_line(app, sim, elapsed), highlight=False)
                    next_line += 5.0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await stop.wait()
        else:
            with Live(_tables(app, sim, 0.0, duration_s), console=console,
                      refresh_per_second=2) as live:
                while (elapsed := time.monotonic() - started) < duration_s and \
                        not stop.is_set():
                    live.update(_tables(app, sim, elapsed, duration_s))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await stop.wait()
    finally:
        await cancel_and_wait(helpers)
        await meter.stop()
        await sim.stop()
        await app.stop()
        data.cleanup()
    return stats


DEMO_SITES = ("carport", "plaza")
PLAZA_DURATION_S = 180.0
"""The plaza's DR event starts 20 s in and lasts 2 minutes: room to see the restore."""


def demo_cmd(
    site: Annotated[str, typer.Option(
        "--site", metavar="carport|plaza", help="carport: AC chargers sharing circuits, cars "
        "coming and going; plaza: twenty 150 kW DC stations (examples/plaza.yaml) and a "
        "demand-response event, from the utility's signal to the restore.")] = "carport",
    duration: Annotated[float | None, typer.Option(
        "--duration", min=1, max=3600, metavar="SECONDS",
        help="Seconds to run (bounded; default 60, 180 with --site plaza).",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option(
        "--seed", metavar="N", help="Seed of the car arrivals.")] = 1,
    chargers: Annotated[int, typer.Option(
        "--chargers", min=1, max=500, metavar="N",
        help="Number of simulated chargers (carport; the plaza has its twenty).")] = 20,
    plain: Annotated[bool, typer.Option(
        "--plain/--no-plain", help="Periodic lines instead of a live table (the default "
        "when stdout is not a terminal).")] = False,
    api_port: Annotated[int, typer.Option(
        "--api-port", metavar="PORT", help="Serve the dashboard and the REST API on "
        "http://127.0.0.1:PORT/ (0 picks a free port, -1 disables them).")] = 8080,
) -> None:
    """Watch load sharing: a sample site, the real CSMS and controller, simulated chargers
    (OCPP 1.6J and 2.0.1, 1- and 3-phase) and cars that come and go; or, with --site
    plaza, a DC plaza through a demand-response event."""
    import asyncio
    import contextlib
    import signal

    from rich.console import Console
    if site not in DEMO_SITES:
        raise _fail(f"[red]--site must be one of {', '.join(DEMO_SITES)}, got {site!r}[/]", 2)
    _logging("error")
    console = Console(soft_wrap=True)  # plain lines stay one line each in a pipe
    port = None if api_port < 0 else api_port

    def stopping() -> asyncio.Event:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return stop

    if site == "plaza":
        from gridshare.cli.plaza_demo import PlazaStats, run_plaza_demo, summary

        async def plaza() -> PlazaStats:
            return await run_plaza_demo(duration or PLAZA_DURATION_S, seed, plain=plain,
                                        console=console, stop=stopping(), api_port=port)

        for line in summary(asyncio.run(plaza())):
            console.print(line, highlight=False)
        return

    async def main() -> DemoStats:
        return await run_demo(duration or 60.0, seed, chargers, plain=plain, console=console,
                              stop=stopping(), api_port=port)

    stats = asyncio.run(main())
    console.print(f"{stats.arrivals} cars arrived, {stats.departures} left.")
    for gid, worst in stats.worst.items():
        over = stats.over_s.get(gid, 0.0)
        note = "" if over == 0 else f" (above its limit for {over:.1f} s while cars " \
                                    f"followed a lower setpoint)"
        console.print(f"  {gid}: peak {worst * 100:.0f} % of its limit{note}")


def register(app: typer.Typer) -> None:
    app.command("serve", epilog=SERVE_EPILOG)(serve_cmd)
    app.command("demo", epilog=DEMO_EPILOG)(demo_cmd)
