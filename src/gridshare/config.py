"""Site configuration: YAML in, a validated :class:`~gridshare.core.topology.Topology` out.

Every problem found is reported at once, each with the file, the line, the path of the
bad node (``groups[0].groups[1].max_current``) and what is wrong, so an installer fixes
the whole file in one pass instead of one error per start-up.
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gridshare.billing_config import BillingSpec, load_tariff_file, tariff_problems
from gridshare.core.dr.curtail import CurtailPolicy
from gridshare.core.frequency import (
    PLAUSIBLE_DEVIATION_HZ,
    FrequencySettings,
    UnitKind,
    UnitSpec,
)
from gridshare.core.topology import (
    Charger,
    Connector,
    ConnectorType,
    Group,
    Phase,
    Policy,
    Topology,
    Zone,
)

Loc = tuple[str | int, ...]
_ID_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=_ID_PATTERN)]
Amps = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveAmps = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveKw = Annotated[float, Field(gt=0, allow_inf_nan=False)]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    source: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def as_json(self) -> dict[str, Any]:
        """The problem as scripts read it (``--json``)."""
        return {"file": self.source, "line": self.line, "path": self.path,
                "message": self.message}


class ConfigError(ValueError):
    """The configuration is invalid; ``issues`` lists the problems found (the first
    ``KEPT_ISSUES`` of them) and ``more`` counts the others."""

    def __init__(self, issues: list[ConfigIssue], more: int = 0) -> None:
        self.issues = issues
        self.more = more
        text = "\n".join(str(i) for i in issues)
        super().__init__(text + (f"\n… and {more} more" if more else ""))

    @property
    def count(self) -> int:
        """How many problems were found in all."""
        return len(self.issues) + self.more


DEFAULT_MAX_SIZE = 16 * 1024 * 1024
"""Bytes: the largest site or demand file read (a 10,000-charger site is about 1.5 MB)."""
SHOWN_CHARS = 80
"""A value echoed in a message is cut to this many characters."""
KEPT_ISSUES = 1000
"""Problems kept with their wording and line; past these a file's problems are only
counted (a 15 MB file can hold a million; nobody reads past the first screen of them)."""


def shown(value: Any) -> str:
    """``repr(value)`` cut to ``SHOWN_CHARS``: a 50 MB value is named, not echoed back."""
    if isinstance(value, str):
        if len(value) <= SHOWN_CHARS:
            return repr(value)
        head = repr(value[:SHOWN_CHARS])
        return f"{head[:SHOWN_CHARS - 2]}…{head[0]} ({len(value)} characters)"
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4,300-digit limit for str()
        return f"a number of {int(value.bit_length() * 0.30103) + 1} digits"
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS - 1]}… ({len(text)} characters)"


def value_problem(exc: ValueError | OverflowError) -> str:
    """A parser's ValueError worded for the file's author, not for a Python programmer."""
    text = str(exc)
    if "integer string conversion" in text:
        return "a number of more than 4300 digits"
    return _clip(text)


def _clip(text: str, size: int = 4 * SHOWN_CHARS) -> str:
    """A message from a parser, which may quote the file, kept to a few lines' length."""
    return text if len(text) <= size else text[:size - 1] + "…"


def read_text(path: Path, max_size: int = DEFAULT_MAX_SIZE) -> str:
    """A site or demand file's text; ConfigError in one line when it is larger than
    ``max_size`` bytes (known from its size, before reading), binary or not UTF-8."""
    source = str(path)

    def refuse(message: str) -> ConfigError:
        return ConfigError([ConfigIssue(source, None, "", message)])

    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > max_size:
                raise refuse(f"{size} bytes, above the limit of {max_size} (--max-size)")
            data = file.read(max_size + 1)  # a pipe or a device has no size to check
    except OSError as exc:
        raise refuse(f"cannot read: {exc.strerror or exc}") from exc
    if len(data) > max_size:
        raise refuse(f"more than {max_size} bytes, above the limit (--max-size)")
    nul = data.find(b"\0")
    if nul >= 0:
        raise refuse(f"not a UTF-8 text file (NUL byte at offset {nul}: a binary file?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"not a UTF-8 text file (byte 0x{data[exc.start]:02x} at offset "
                     f"{exc.start})") from None
    return text.removeprefix("\ufeff")


class ProblemList:
    """The problems of one file as checks find them: the first ``limit`` with their path and
    wording, the others only counted; lines are looked up at the end, in one pass, for
    the kept ones only."""

    def __init__(self, source: str, limit: int = KEPT_ISSUES) -> None:
        self.source = source
        self.limit = limit
        self.found: list[tuple[Loc, str, int | None]] = []
        self.more = 0

    @property
    def full(self) -> bool:
        return len(self.found) >= self.limit

    @property
    def count(self) -> int:
        return len(self.found) + self.more

    def add(self, loc: Loc, message: str, line: int | None = None) -> None:
        if len(self.found) < self.limit:
            self.found.append((loc, message, line))
        else:
            self.more += 1

    def skip(self, count: int) -> None:
        """Count problems that were found once the list was full, without wording them."""
        self.more += count

    def wanted(self) -> set[Loc]:
        """Every path whose line a kept problem may need (its own, or an ancestor's)."""
        out: set[Loc] = set()
        for loc, _, line in self.found:
            if line is None:
                out.update(loc[:n] for n in range(len(loc) + 1))
        return out

    def raise_if_any(self, text: str, *, duplicates: bool = False) -> None:
        """Raise the problems found so far, with their lines (worked out only now, on the
        error path, from ``text``); ``duplicates``: look for repeated keys too (the fast
        reader cannot see them), which may be the only problems."""
        if not (duplicates or self.count):
            return
        lines, dups = scan_lines(text, self.wanted(), repeated=duplicates)
        for loc, line in dups:
            self.add(loc, "duplicate key", line)
        if self.count:
            raise self.error(lines)

    def error(self, lines: dict[Loc, int]) -> ConfigError:
        """The ConfigError of the problems, in the file's order, each with the line of its
        path or of its nearest ancestor that has one."""
        issues = []
        for loc, message, known in self.found:
            line = known if known is not None else next(
                (lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
            issues.append(ConfigIssue(self.source, line, _fmt(loc), message))
        issues.sort(key=lambda i: i.line or 0)
        return ConfigError(issues, self.more)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConnectorSpec(_Strict):
    type: ConnectorType | None = None
    max_current: PositiveAmps | None = None
    max_power: PositiveAmps | None = None
    """kW, for DC connectors."""
    min_current: Amps | None = None


class OpenEvseSpec(_Strict):
    """How gridshare reaches an OpenEVSE box (``driver: openevse``): its HTTP API for the
    claim and the shaper heartbeat, its MQTT status topics on the site's ``mqtt:`` broker
    (docs/openevse.md)."""

    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+/?$")]
    """``http://host[:port]`` of the box's web server."""
    mqtt_base: Annotated[str, Field(pattern=r"^[^#+\s]+$", max_length=200)]
    """The box's MQTT base topic (its ``mqtt_topic`` setting, e.g. ``openevse-1a2b``)."""
    claim_client: Annotated[int, Field(ge=1, le=2147483647)] = 18259
    """The numeric client id of gridshare's claim (``POST /claims/<id>``)."""
    username: str | None = None
    """HTTP basic auth user (the box's ``www_username``); none: no auth."""
    password_file: Path | None = None
    """A file holding the HTTP password (relative to the site file)."""
    heartbeat_s: Annotated[float, Field(ge=1, le=3600, allow_inf_nan=False)] = 10.0
    """Seconds between shaper heartbeats (``POST /status {"shaper_live_pwr": 0}``)."""
    safe_current_a: Annotated[float, Field(ge=0, le=80, allow_inf_nan=False)] = 0.0
    """A a claim falls to when its lease ends unrenewed while gridshare runs, until the
    controller sends the charger's failsafe (below 6 A: paused)."""
    offline_after_s: Annotated[float, Field(ge=5, le=86400, allow_inf_nan=False)] = 120.0
    """A box whose status topics are silent this long is offline."""
    timeout_s: Annotated[float, Field(gt=0, le=60, allow_inf_nan=False)] = 5.0
    """Seconds an HTTP request to the box may take."""


class ChargerSpec(_Strict):
    id: Id
    driver: Literal["ocpp", "openevse"] = "ocpp"
    """How gridshare controls it: OCPP (it connects to us) or an OpenEVSE box's HTTP API."""
    openevse: OpenEvseSpec | None = None
    """``driver: openevse``: where the box is (docs/openevse.md)."""
    max_current: PositiveAmps | None = None
    max_power: PositiveAmps | None = None
    """kW (typically DC); converted to A per phase at the site voltage."""
    min_current: Amps = 6.0
    phases: Literal[1, 3] = 3
    phase: Literal["L1", "L2", "L3"] | None = None
    failsafe_current: Amps = 0.0
    priority: int = 0
    connectors: Annotated[int, Field(ge=1, le=16)] | list[ConnectorSpec] = 1
    password_hash: str | None = None
    """For security profiles 1 and 2: ``gridshare hash-password`` prints one; the plain
    password is never written down."""
    zone: Id | None = None
    """The demand-response zone (declared under ``zones:``) the station is in."""
    max_station_kw: PositiveKw | None = None
    """The most the whole station may draw (kW): demand response never splits above it."""
    contract_max_kw: PositiveKw | None = None
    """The grid contract's kW ceiling for the station: drawing above it raises an alert."""
    v2x: bool = False
    """Bidirectional (V2G): it may be sent discharge setpoints, but only while connected
    over OCPP 2.1 (docs/v2g.md)."""

    @model_validator(mode="after")
    def _consistent(self) -> ChargerSpec:
        if self.max_current is None and self.max_power is None:
            raise ValueError("needs max_current (A) or max_power (kW)")
        if self.max_current is not None and self.min_current > self.max_current:
            raise ValueError(f"min_current {self.min_current} A is above "
                             f"max_current {self.max_current} A")
        if self.phases == 1 and self.phase is None:
            raise ValueError("a 1-phase charger needs phase: L1, L2 or L3")
        if self.phases == 3 and self.phase is not None:
            raise ValueError(f"phase: {self.phase} given for a 3-phase charger")
        if self.driver == "openevse" and self.openevse is None:
            raise ValueError("driver openevse needs openevse: {url: ..., mqtt_base: ...}")
        if self.driver != "openevse" and self.openevse is not None:
            raise ValueError("openevse: given for a charger whose driver is not openevse")
        return self


class GroupSpec(_Strict):
    id: Id
    max_current: Amps | None = None
    max_power: Amps | None = None
    """kW."""
    phases: Literal[1, 3] = 3
    policy: Policy | None = None
    meter: str | None = None
    parent: Id | None = None
    groups: list[GroupSpec] = []
    chargers: list[Id] = []

    @model_validator(mode="after")
    def _has_limit(self) -> GroupSpec:
        if self.max_current is None and self.max_power is None:
            raise ValueError("needs max_current (A per phase) or max_power (kW)")
        return self


class TlsSpec(_Strict):
    certfile: Path
    keyfile: Path
    cafile: Path | None = None
    """CA that signs the chargers' client certificates (security profile 3)."""


class OcppSpec(_Strict):
    """How the central system meets the chargers; every field has a safe default."""

    security_profile: Literal[0, 1, 2, 3] = 0
    """0 none, 1 basic auth, 2 TLS + basic auth, 3 mutual TLS with client certificates."""
    allow_auto_register: bool = False
    """Accept charger ids that are not in this file (off: unknown ids are refused)."""
    pending_unknown: bool = False
    """Let charger ids that are not in this file connect, answered ``Pending`` at boot and
    never controlled nor counted, listed for an operator to adopt (``POST
    /api/v1/chargers``); off: unknown ids are refused. Excludes ``allow_auto_register``."""
    tls: TlsSpec | None = None
    heartbeat_interval: Annotated[int, Field(ge=1, le=86400)] = 60
    """Seconds; a charger silent for 2.5 x this is offline (counted at its failsafe)."""
    lease: Annotated[float, Field(ge=10, le=86400, allow_inf_nan=False)] = 180.0
    """Seconds a live setpoint stays valid on the charger unless renewed."""
    command_timeout: Annotated[float, Field(gt=0, le=300, allow_inf_nan=False)] = 10.0
    command_retries: Annotated[int, Field(ge=0, le=10)] = 2
    no_subprotocol: Literal["ocpp1.6", "ocpp2.0.1"] | None = "ocpp1.6"
    """The OCPP version a charger that offers no WebSocket subprotocol is served with (many
    real chargers offer none); null: refuse such chargers (the connection is closed)."""

    @model_validator(mode="after")
    def _tls_when_needed(self) -> OcppSpec:
        if self.security_profile >= 2 and self.tls is None:
            raise ValueError(f"security_profile {self.security_profile} needs tls: "
                             "{certfile, keyfile}")
        if self.security_profile == 3 and (self.tls is None or self.tls.cafile is None):
            raise ValueError("security_profile 3 needs tls.cafile to check client certificates")
        if self.pending_unknown and self.allow_auto_register:
            raise ValueError("pending_unknown and allow_auto_register exclude each other: "
                             "unknown chargers are either held pending or accepted")
        return self


class HomeAssistantSpec(_Strict):
    """Publishing the site to Home Assistant over the ``mqtt:`` broker (MQTT discovery)."""

    enabled: bool = True
    """On by default once ``mqtt:`` is given; ``false`` publishes nothing."""
    discovery_prefix: Annotated[str, Field(min_length=1, max_length=100,
                                           pattern=r"^[^#+\s]+$")] = "homeassistant"
    """Home Assistant's discovery prefix (its MQTT integration's setting)."""


class MqttSpec(_Strict):
    """The site's MQTT broker (meters, Home Assistant, and later DR signals)."""

    url: Annotated[str, Field(pattern=r"^mqtts?://[^/\s]+$")] = "mqtt://127.0.0.1:1883"
    """``mqtt://host[:port]`` (1883) or ``mqtts://host[:port]`` (8883, TLS)."""
    username: str | None = None
    password_file: Path | None = None
    """A file holding the password (relative to the site file); never the password itself."""
    client_id: str | None = None
    cafile: Path | None = None
    """CA to check an ``mqtts://`` broker with (default: the system's)."""
    homeassistant: HomeAssistantSpec = HomeAssistantSpec()
    """Home Assistant MQTT discovery, state and command topics (docs/homeassistant.md)."""


MeterUnit = Literal["A", "W", "kW"]
DotPath = Annotated[str, Field(min_length=1, max_length=200)]


class MeterSpec(_Strict):
    """A meter that measures a group's whole load (its chargers included, unless
    ``includes_chargers: false``), and where its readings come from; or, with no
    ``source`` and a place (``feeder``/``substation``/``region``), a utility (AMI) meter
    whose readings arrive on the telemetry topics and are summed per place
    (docs/telemetry.md)."""

    id: Id
    source: Literal["mqtt", "http", "ocpp", "ami"] = "ami"
    """Where a group meter's readings come from; ``ami`` (the default, written by leaving
    ``source`` out) is a utility meter of the telemetry ingest."""
    feeder: Id | None = None
    """AMI meters: the feeder, substation and region the meter is on (at least one)."""
    substation: Id | None = None
    region: Id | None = None
    topic: str | None = None
    """mqtt: the topic its readings are published on (JSON, or a plain number)."""
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """http: a JSON endpoint polled every ``interval`` seconds."""
    charger: Id | None = None
    """ocpp: the charge point whose MeterValues are read: a charger of this file (its
    connector 0 measures the whole charger's supply) or a dedicated meter that connects to
    the central system as a charge point with this id."""
    connector: Annotated[int, Field(ge=0)] = 0
    password_hash: str | None = None
    """ocpp: a dedicated meter's password hash (security profiles 1 and 2), as a
    charger's (``gridshare hash-password``)."""
    fields: dict[Literal["L1", "L2", "L3"], DotPath] | None = None
    """Per-phase values: dot paths into the JSON (``emeters.0.current``)."""
    field: DotPath | None = None
    """One total value (``unit: W`` or ``kW``), split evenly over the group's phases."""
    unit: MeterUnit = "A"
    max_age: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 30.0
    """Seconds without a reading before the group fails closed."""
    interval: Annotated[float, Field(ge=0.1, le=3600, allow_inf_nan=False)] = 2.0
    """http: seconds between polls."""
    includes_chargers: bool = True
    """False when the meter measures only the other loads (gridshare then adds nothing)."""

    @model_validator(mode="after")
    def _source_fields(self) -> MeterSpec:
        if self.source == "ami":
            return self._ami_fields()
        if self.feeder is not None or self.substation is not None or self.region is not None:
            raise ValueError("feeder, substation and region place an AMI meter: leave out "
                             "source")
        need = {"mqtt": "topic", "http": "url", "ocpp": "charger"}[self.source]
        if getattr(self, need) is None:
            raise ValueError(f"source {self.source} needs {need}")
        for other in {"topic", "url", "charger"} - {need}:
            if getattr(self, other) is not None:
                raise ValueError(f"{other} is not used with source {self.source}")
        if self.source != "ocpp":
            if self.fields is not None and self.field is not None:
                raise ValueError("give fields (per phase) or field (a total), not both")
            if self.fields is not None and self.unit != "A":
                raise ValueError("fields are per-phase currents: unit must be A")
            if self.field is not None and self.unit == "A":
                raise ValueError("field is a total: unit must be W or kW")
        elif self.fields is not None or self.field is not None:
            raise ValueError("source ocpp reads the measurands of MeterValues: no fields")
        if self.password_hash is not None and self.source != "ocpp":
            raise ValueError("password_hash is for a meter that connects over ocpp")
        return self

    def _ami_fields(self) -> MeterSpec:
        if self.feeder is None and self.substation is None and self.region is None:
            raise ValueError("needs source (mqtt, http or ocpp) for a group meter, or "
                             "feeder/substation/region for an AMI meter")
        used = [name for name in ("topic", "url", "charger", "fields", "field",
                                  "password_hash") if getattr(self, name) is not None]
        if used:
            raise ValueError(f"{', '.join(used)}: not used by an AMI meter (its readings "
                             f"come on the telemetry topics)")
        return self

    @property
    def is_ami(self) -> bool:
        """A utility meter of the telemetry ingest, not a group's meter."""
        return self.source == "ami"


TopicPrefix = Annotated[str, Field(min_length=1, max_length=200,
                                    pattern=r"^[^#+\s]+[^#+\s/]$|^[^#+\s/]$")]


class TelemetrySpec(_Strict):
    """Meter telemetry over the ``mqtt:`` broker: AMI meters and non-OCPP stations in,
    demand per feeder/substation/region out (docs/telemetry.md states every default)."""

    ami_prefix: TopicPrefix | None = None
    """AMI readings arrive on ``<ami_prefix>/<meter id>``; default ``gridshare/<site>/ami``."""
    stations_prefix: TopicPrefix | None = None
    """Station meter values on ``<stations_prefix>/<station id>``; default
    ``gridshare/<site>/stations``."""
    qos: Literal[0, 1, 2] = 1
    """Subscription QoS; 1 (or 2) with the persistent session: nothing acknowledged is lost."""
    client_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    """The fixed MQTT client id of the persistent session; default
    ``gridshare-telemetry-<site>``."""
    window: Annotated[float, Field(ge=1, le=86400, allow_inf_nan=False)] = 60.0
    """Seconds per tumbling demand window (by event time)."""
    lateness: Annotated[float, Field(ge=0, le=86400, allow_inf_nan=False)] = 30.0
    """Seconds a reading may arrive after its window ended; later ones are counted and
    dropped."""
    clock_skew: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] = 30.0
    """Seconds a reading's ``ts`` may be ahead of our clock before it is rejected as in the
    future."""
    batch_rows: Annotated[int, Field(ge=1, le=100_000)] = 1000
    """Readings committed (and then acknowledged) together at most."""
    batch_interval: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] = 0.05
    """Seconds a reading waits at most for its batch's commit."""

    def ami_topic_prefix(self, site: str) -> str:
        return self.ami_prefix or f"gridshare/{site}/ami"

    def stations_topic_prefix(self, site: str) -> str:
        return self.stations_prefix or f"gridshare/{site}/stations"

    def session_client_id(self, site: str) -> str:
        return self.client_id or f"gridshare-telemetry-{site}"


class ZoneSpec(_Strict):
    """A demand-response zone: the stations one utility signal addresses."""

    id: Id
    capacity_kw: PositiveKw | None = None


Kw = Annotated[float, Field(ge=0, allow_inf_nan=False)]
DrPriorityNumber = Literal[1, 2, 3]


class OpenAdrSpec(BaseModel):
    """An OpenADR 2.0b VEN (docs/dr.md, "OpenADR")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vtn_url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    """The VTN's base URL, e.g. ``https://vtn.example.com/OpenADR2/Simple/2.0b``."""
    ven_name: Annotated[str, Field(min_length=1, max_length=200)]
    ven_id: str | None = None
    """As issued by the utility; none: the VTN assigns one when the VEN registers."""
    zone: str | None = None
    """The zone of an event whose targets name no zone of ``targets``."""
    targets: dict[str, str] = {}
    """An event target (its ``resource_id``, ``group_id``, ``party_id`` or ``ven_id``) ->
    the zone it means. An event whose targets map to several zones applies to each."""
    levels: dict[int, Kw] = {}
    """SIMPLE signal level (1 moderate, 2 high, 3 special) -> kW the zone sheds; also for
    LOAD_CONTROL ``x-loadControlLevelOffset``. Level 0 (normal) asks nothing."""
    signal_type: Literal["CURTAIL", "SHED"] = "CURTAIL"
    """How the zone meets an OpenADR event: dimmed stations, or whole stations paused."""
    priority: DrPriorityNumber = 2
    """The DR priority of an event (1 emergency, 2 economic, 3 optional) ..."""
    priorities: dict[int, DrPriorityNumber] = {}
    """... unless its OpenADR priority (the event descriptor's, 1 highest, 0 unset) is
    mapped here, e.g. ``{1: 1}``: an OpenADR priority-1 event is an emergency."""
    opt_out: list[DrPriorityNumber] = []
    """DR priorities the VEN opts out of (and does not apply), e.g. ``[3]``: optional
    events are declined."""
    report_every: Annotated[float, Field(ge=1, le=3600)] = 10.0
    """Seconds between samples of the zones' draw in the TELEMETRY_USAGE report, at least."""
    cert: Path | None = None
    """PEM certificate and ``key`` for TLS client authentication and message signing."""
    key: Path | None = None
    passphrase_file: Path | None = None
    ca_file: Path | None = None
    """CA to check an ``https://`` VTN with."""
    vtn_fingerprint: str | None = None
    """Checks the signature of every message from the VTN when given."""

    def zones_named(self) -> list[tuple[tuple[str, ...], str]]:
        """Every zone id this names, with its path under ``openadr`` (for the site file's
        unknown-zone check)."""
        out: list[tuple[tuple[str, ...], str]] = []
        if self.zone is not None:
            out.append((("zone",), self.zone))
        out += [(("targets", target), zone) for target, zone in self.targets.items()]
        return out


class DemandResponseSpec(_Strict):
    """How demand-response events are carried out (every field has a default)."""

    policy: CurtailPolicy = CurtailPolicy.PROPORTIONAL
    """How a zone's reduction is split: proportional (each its share of the zone's load)
    or priority (lowest priority stations first)."""
    confirm_within: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 30.0
    """Seconds for the meters to confirm a reduction before more is shed and an alert
    raised."""
    tolerance_kw: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.5
    """A reduction this close to the target counts as met (meter accuracy)."""
    openadr: OpenAdrSpec | None = None
    """An OpenADR 2.0b VEN that turns a utility's VTN events into DR signals (docs/dr.md)."""


Pct = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
MqttTopic = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^#+\s]+$")]
"""A topic to publish or subscribe to exactly: no wildcards, no spaces."""


class FrequencyUnitSpec(_Strict):
    """A V2G charger or a stationary battery that answers the frequency."""

    charger: Id | None = None
    """A charger of this file (V2G over OCPP 2.1)."""
    battery: Id | None = None
    """A stationary battery reached over MQTT (``setpoint_topic``, ``soc_topic``)."""
    max_discharge_kw: Kw
    max_charge_kw: Kw
    capacity_kwh: PositiveKw
    min_soc: Pct
    """%: the response never discharges below it (what the driver needs by departure)."""
    max_dod: Pct = 100.0
    """%: depth-of-discharge cap; the SoC floor is at least 100 − this (100: no extra
    floor beyond ``min_soc``)."""
    max_cycles_per_day: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    """Equivalent full cycles over a rolling day; absent: no cycle cap."""
    setpoint_topic: MqttTopic | None = None
    soc_topic: MqttTopic | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> FrequencyUnitSpec:
        if (self.charger is None) == (self.battery is None):
            raise ValueError("give charger: ID or battery: ID (one of them)")
        if self.battery is not None and (self.setpoint_topic is None or self.soc_topic is None):
            raise ValueError("a battery needs setpoint_topic and soc_topic")
        if self.charger is not None and (self.setpoint_topic or self.soc_topic):
            raise ValueError("setpoint_topic and soc_topic are for a battery (a charger is "
                             "reached over OCPP)")
        if self.max_discharge_kw == 0 and self.max_charge_kw == 0:
            raise ValueError("max_discharge_kw and max_charge_kw are both 0: the unit "
                             "could not respond")
        return self

    @property
    def id(self) -> str:
        uid = self.charger if self.charger is not None else self.battery
        assert uid is not None
        return uid

    def unit(self) -> UnitSpec:
        """The core's view of the unit."""
        return UnitSpec(self.id, UnitKind.CHARGER if self.charger else UnitKind.BATTERY,
                        self.max_discharge_kw, self.max_charge_kw, self.capacity_kwh,
                        self.min_soc, self.max_dod, self.max_cycles_per_day)


class FrequencySourceSpec(_Strict):
    mqtt_topic: MqttTopic
    """JSON ``{"ts", "hz"}`` or a plain number, per message."""


class FrequencyResponseSpec(_Strict):
    """Droop frequency response (docs/frequency.md)."""

    nominal_hz: Literal[50, 60]
    deadband_mhz: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    full_activation_mhz: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    safety_window_hz: tuple[Annotated[float, Field(allow_inf_nan=False)],
                            Annotated[float, Field(allow_inf_nan=False)]]
    """[low, high]: outside it every unit goes to its safe state and an alarm says why."""
    mode: Literal["central", "local"] = "central"
    source: FrequencySourceSpec
    units: Annotated[list[FrequencyUnitSpec], Field(min_length=1)]
    hysteresis_mhz: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 5.0
    """Once responding, the response ends below deadband − this (no chattering)."""
    stale_after_s: Annotated[float, Field(gt=0, le=60, allow_inf_nan=False)] = 1.0
    """Seconds without a valid sample before every unit goes to its safe state."""
    recover_after_s: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] = 5.0
    """Seconds back inside the safety window before the units respond again."""
    endurance_s: Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False)] = 900.0
    """A unit discharges at most what it can hold this long above its SoC floor."""

    @model_validator(mode="after")
    def _consistent(self) -> FrequencyResponseSpec:
        if self.deadband_mhz >= self.full_activation_mhz:
            raise ValueError(f"deadband_mhz {self.deadband_mhz:g} must be below "
                             f"full_activation_mhz {self.full_activation_mhz:g}")
        if self.deadband_mhz > 0 and self.hysteresis_mhz >= self.deadband_mhz:
            raise ValueError(f"hysteresis_mhz {self.hysteresis_mhz:g} must be below "
                             f"deadband_mhz {self.deadband_mhz:g}")
        low, high = self.safety_window_hz
        nominal, band = float(self.nominal_hz), self.deadband_mhz / 1000.0
        if not (nominal - PLAUSIBLE_DEVIATION_HZ <= low < nominal - band
                and nominal + band < high <= nominal + PLAUSIBLE_DEVIATION_HZ):
            raise ValueError(
                f"safety_window_hz [{low:g}, {high:g}] must lie around nominal "
                f"{nominal:g} Hz: low below {nominal - band:g} and high above "
                f"{nominal + band:g} (nominal ± the dead band), within "
                f"±{PLAUSIBLE_DEVIATION_HZ:g} Hz")
        return self

    def settings(self) -> FrequencySettings:
        """The core's settings, in Hz and seconds."""
        return FrequencySettings(
            nominal_hz=float(self.nominal_hz), deadband_hz=self.deadband_mhz / 1000.0,
            full_activation_hz=self.full_activation_mhz / 1000.0,
            window_low_hz=self.safety_window_hz[0], window_high_hz=self.safety_window_hz[1],
            hysteresis_hz=self.hysteresis_mhz / 1000.0, stale_after_s=self.stale_after_s,
            recover_after_s=self.recover_after_s, endurance_s=self.endurance_s)



_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?$")
_CLOCK_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def duration_h(value: str) -> float | None:
    """``"24h"``, ``"15m"``, ``"7h30m"`` -> hours; None if not one (the charge-plan form)."""
    found = _DURATION_RE.fullmatch(value.strip())
    if not found or not any(found.groups()):
        return None
    hours, minutes = (float(g) if g else 0.0 for g in found.groups())
    return hours + minutes / 60


def clock_h(value: str | int) -> float | None:
    """``"07:00"`` -> 7.0; an unquoted 07:00 reaches us as 420 (YAML 1.1 base 60)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value / 60 if 0 <= value < 24 * 60 else None
    found = _CLOCK_RE.fullmatch(str(value).strip())
    return None if not found else int(found.group(1)) + int(found.group(2)) / 60


class TariffStepSpec(_Strict):
    """One step of a time-of-use tariff: ``price`` per kWh from ``from`` (time of day)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    start: Annotated[str | int, Field(alias="from")]
    price: Annotated[float, Field(allow_inf_nan=False)]

    @model_validator(mode="after")
    def _clock(self) -> TariffStepSpec:
        if clock_h(self.start) is None:
            raise ValueError(f"from: must be a time of day like \"07:00\" (got "
                             f"{self.start!r})")
        return self


class ChargePlanningSpec(_Strict):
    """Live charge planning (docs/planning.md): the allocation follows the plan."""

    enabled: bool = True
    tariff: list[TariffStepSpec] | Annotated[str, Field(min_length=1)] | None = None
    """Inline steps ``[{from: "07:00", price: 0.30}, ...]`` or a tariff file as
    ``gridshare charge-plan --tariff`` reads (relative to the site file); None: flat."""
    timezone: str = "UTC"
    """The tariff's times of day are in this zone (IANA name)."""
    horizon: str = "24h"
    period: str = "15m"
    replan_min_interval_s: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] = 5.0
    """A burst of arrivals and need changes within this is one re-plan."""
    late_after_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 60.0
    """No plan for the current period this long after it began: caps lifted + alarm."""
    default_need_kwh: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    """Need of a car whose driver gave none (None: such a car is not planned, no cap)."""
    default_stay: str = "8h"
    """Departure of a car that gave none: this long after its arrival."""

    @model_validator(mode="after")
    def _consistent(self) -> ChargePlanningSpec:
        for name in ("horizon", "period", "default_stay"):
            hours = duration_h(getattr(self, name))
            if hours is None or hours <= 0:
                raise ValueError(f"{name}: not a duration like 24h, 15m or 7h30m "
                                 f"(got {getattr(self, name)!r})")
        periods = self.horizon_h / self.period_h
        if abs(periods - round(periods)) > 1e-9 or not 1 <= round(periods) <= 2000:
            raise ValueError(f"horizon {self.horizon} must be a whole number (1-2000) of "
                             f"periods of {self.period}")
        if isinstance(self.tariff, list):
            if not self.tariff:
                raise ValueError("tariff: give at least one step (or leave it out: flat)")
            starts = [clock_h(s.start) or 0.0 for s in self.tariff]
            if any(b <= a for a, b in itertools.pairwise(starts)):
                raise ValueError("tariff: steps must be in increasing time of day")
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(self.timezone)
        except (ValueError, KeyError, OSError) as exc:
            raise ValueError(f"timezone: unknown zone {self.timezone!r}") from exc
        return self

    @property
    def horizon_h(self) -> float:
        return duration_h(self.horizon) or 24.0

    @property
    def period_h(self) -> float:
        return duration_h(self.period) or 0.25

    @property
    def periods(self) -> int:
        return round(self.horizon_h / self.period_h)

    @property
    def default_stay_h(self) -> float:
        return duration_h(self.default_stay) or 8.0


class RegulationSpec(_Strict):
    """Area regulation from the meters (docs/regulation.md)."""

    area: Id
    """The area whose load is aggregated (a group id, zone or feeder the load source knows)."""
    scheduled_kw: Annotated[float, Field(allow_inf_nan=False)]
    """Scheduled generation (or import) of the area, kW."""
    nominal_hz: Literal[50, 60] | None = None
    """Default: ``frequency_response.nominal_hz``, else 50."""
    bias_kw_per_hz: Annotated[float, Field(le=0, allow_inf_nan=False)] = 0.0
    """B of ACE = (P_load − P_sched) + B·Δf, kW/Hz, ≤ 0 (NERC sign; −D cancels load
    damping)."""
    kp: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.5
    ki: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.2
    """Integral gain, 1/s."""
    deadline_s: Annotated[float, Field(gt=0, le=60, allow_inf_nan=False)] = 5.0
    """Inputs older than this, or a step later than this: hold safe state + alarm."""
    step_s: Annotated[float, Field(gt=0, le=60, allow_inf_nan=False)] = 1.0
    valid_s: Annotated[float, Field(gt=0, le=600, allow_inf_nan=False)] = 10.0
    """How long a published setpoint holds on the unit without a newer one."""
    frequency_topic: MqttTopic | None = None
    """Frequency JSON {"ts", "hz"} (default: the frequency_response source, else
    gridshare/<site>/grid/frequency)."""
    units: Annotated[list[Id], Field(min_length=1)] | None = None
    """Battery ids of frequency_response.units to dispatch (default: all its batteries)."""
    load_topics: Annotated[list[MqttTopic], Field(min_length=1)] | None = None
    """Feeder/substation meters of the area on MQTT (``{"ts", "kw"}`` or a number, net of
    the storage behind them), summed; None: the area is a zone of the live load
    aggregation (``zones:``) or a place of the AMI meters (see ``area_level``)."""
    area_level: Literal["zone", "feeder", "substation", "region"] | None = None
    """What ``area`` names: a zone of ``zones:``, or a feeder/substation/region of the AMI
    meters (their demand windows, docs/telemetry.md). Default: a zone with that id, else
    the AMI feeder, then substation, then region with that id."""
    min_reporting: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.9
    """AMI areas: the share of the area's meters that must have reported in a demand
    window for it to be used (scaled up to all of them); a window with fewer is skipped."""

    @model_validator(mode="after")
    def _one_source(self) -> RegulationSpec:
        if self.load_topics is not None and self.area_level is not None:
            raise ValueError("give load_topics (MQTT feeder meters) or area_level (a zone "
                             "or an AMI feeder/substation/region), not both")
        return self


class ApiSpec(_Strict):
    """The REST API of ``gridshare serve`` (tokens come from the command line)."""

    read_token: bool = False
    """Reads need a bearer token too (changes always do)."""


class _SiteHead(_Strict):
    """The site file without its lists, which are checked entry by entry."""

    site: Id
    voltage: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = 230.0
    policy: Policy = Policy.EQUAL
    rotation_interval: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 900.0
    """Seconds a set of paused cars stays paused before the pause rotates."""
    resolution: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.1
    """Setpoint step in A."""
    ocpp: OcppSpec = OcppSpec()
    mqtt: MqttSpec | None = None
    api: ApiSpec = ApiSpec()
    demand_response: DemandResponseSpec = DemandResponseSpec()
    frequency_response: FrequencyResponseSpec | None = None
    charge_planning: ChargePlanningSpec | None = None
    regulation: RegulationSpec | None = None
    billing: BillingSpec | None = None
    telemetry: TelemetrySpec | None = None


class SiteSpec(_SiteHead):
    # fail_fast: a file with a bad entry is checked again entry by entry (every problem,
    # in the writer's words), so validating it whole stops at the first bad entry rather
    # than building a million errors nobody reads.
    groups: Annotated[list[GroupSpec], Field(min_length=1, fail_fast=True)]
    chargers: Annotated[list[ChargerSpec], Field(fail_fast=True)] = []
    meters: Annotated[list[MeterSpec], Field(fail_fast=True)] = []
    zones: Annotated[list[ZoneSpec], Field(fail_fast=True)] = []


_LISTS = ("groups", "chargers", "meters", "zones")


# --- YAML: parsed once, line numbers only when a problem needs them ---------------------
#
# A 10,000-charger site file is about 1.5 MB of YAML. PyYAML's pure-Python parser takes
# seconds for it. A good file is read once, from libyaml's event stream (C), straight into
# dicts and lists: no node tree, no generic constructor, and no line numbers, which only a
# problem needs. When validation finds one, the text is composed again with libyaml, this
# time into nodes with their positions, and each problem's path is looked up there.

_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader when PyYAML was built with it (``yaml.__with_libyaml__``; the wheels
are), else the pure-Python one: slower, same results."""


class _FastLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """The safe loader, remembering the tag of each plain scalar it has resolved.

    A site file repeats the same few keys and numbers tens of thousands of times, and
    PyYAML resolves each occurrence with its regular expressions again. A plain scalar's
    tag depends on its text alone (the safe loader has no path resolvers), so one
    resolution per distinct text gives the same tags.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.plain_tags: dict[str, str] = {}

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode and implicit[0] and not self.yaml_path_resolvers:
            tag = self.plain_tags.get(value)
            if tag is None:
                tag = self.plain_tags[value] = super().resolve(kind, value, implicit)
            return tag
        resolved: str = super().resolve(kind, value, implicit)
        return resolved


class _NeedsFullLoader(Exception):
    """Something the event reader leaves to PyYAML's own composer and constructor, which
    also word today's errors for it: anchors and aliases, explicit tags, merge keys,
    collections as keys, several documents."""


_EXPECT_KEY = object()
"""Marks an open mapping whose next scalar is a key, not a value."""


def _data_from_events(text: str) -> tuple[Any, bool]:
    """The document as ``yaml.safe_load`` builds it, read from libyaml's events, and
    whether some mapping repeats a key spelled the same way (as ``_line_map`` counts them).

    Strings, plain integers and the other implicit scalars (PyYAML's own constructors:
    octal, ``1_000``, ``.inf``, ``yes``, dates) give PyYAML's values. Raises
    ``_NeedsFullLoader`` for anything else, and ``yaml.YAMLError`` for broken YAML.
    """
    loader = _FastLoader(text)
    try:
        constructors = loader.yaml_constructors
        plain_tags = loader.plain_tags  # looked up here: most scalars repeat a known text
        next_event = loader.get_event
        # An open collection: [container, key awaiting its value (or _EXPECT_KEY),
        # the keys as written, how many keys].
        stack: list[list[Any]] = []
        repeated_key = False
        if not isinstance(next_event(), yaml.StreamStartEvent):
            raise _NeedsFullLoader
        event = next_event()
        if isinstance(event, yaml.StreamEndEvent):
            return None, False
        if not isinstance(event, yaml.DocumentStartEvent):
            raise _NeedsFullLoader
        while True:
            event = next_event()
            kind = event.__class__
            if kind is yaml.ScalarEvent:
                if event.anchor is not None or event.tag is not None:
                    raise _NeedsFullLoader
                text_value = event.value
                if event.implicit[0]:  # plain: its tag follows from its text
                    tag = plain_tags.get(text_value)
                    if tag is None:
                        tag = loader.resolve(yaml.ScalarNode, text_value, event.implicit)
                else:  # quoted
                    tag = _STR_TAG
                if tag == _STR_TAG:
                    value = text_value
                elif (tag == _INT_TAG and text_value.isascii() and text_value.isdigit()
                      and (text_value[0] != "0" or text_value == "0")):
                    value = int(text_value)  # the common case, without octal/base-60 rules
                else:
                    construct = constructors.get(tag)
                    if construct is None or tag == _MERGE_TAG:
                        raise _NeedsFullLoader
                    value = construct(loader, yaml.ScalarNode(tag, text_value))
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                if event.anchor is not None or event.tag is not None:
                    raise _NeedsFullLoader
                value = {} if kind is yaml.MappingStartEvent else []
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                done = stack.pop()
                if kind is yaml.MappingEndEvent and len(done[2]) != done[3]:
                    repeated_key = True
                if stack:
                    continue
                value = done[0]
                break
            else:  # an alias, or an event that cannot come here in a valid document
                raise _NeedsFullLoader
            if stack:
                parent = stack[-1]
                if parent[2] is None:
                    parent[0].append(value)
                elif parent[1] is _EXPECT_KEY:
                    if kind is not yaml.ScalarEvent:
                        raise _NeedsFullLoader
                    parent[1] = value
                    parent[2].add(text_value)
                    parent[3] += 1
                else:
                    parent[0][parent[1]] = value
                    parent[1] = _EXPECT_KEY
            if kind is yaml.MappingStartEvent:
                stack.append([value, _EXPECT_KEY, set(), 0])
            elif kind is yaml.SequenceStartEvent:
                stack.append([value, None, None, 0])
            elif not stack:
                break
        if not (isinstance(next_event(), yaml.DocumentEndEvent)
                and isinstance(next_event(), yaml.StreamEndEvent)):
            raise _NeedsFullLoader
        return value, repeated_key
    finally:
        loader.dispose()


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a site file is read.

    Reading a large file makes hundreds of thousands of values and models that are not
    garbage; the collector would scan them over and over while they are made, which more
    than doubles the time of a 10,000-charger file. Nothing read here forms cycles that
    need collecting meanwhile; the previous state is restored afterwards.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _read_yaml(text: str) -> tuple[Any, bool]:
    """The document's data, and whether its line map must be walked even if it validates
    (a repeated key, or a document only PyYAML's full loader reads)."""
    try:
        return _data_from_events(text)
    except _NeedsFullLoader:
        return yaml.load(text, Loader=_FastLoader), True  # a safe loader: see _FastLoader


_PURE_WORDING_MAX = 1_000_000
"""Characters: above this a YAML error keeps libyaml's wording (the pure-Python parser reads
about a megabyte a second, and a broken 15 MB file must not take minutes to report)."""


def _yaml_problem(text: str, fast_error: yaml.YAMLError) -> tuple[int | None, str]:
    """Line and wording of a YAML error, as the pure-Python parser words it.

    libyaml words its scanner, parser and composer errors differently ("did not find
    expected ..."); the error path reads the text again with the pure-Python composer so
    that messages stay the same whichever parser found the problem. It stops at the error,
    so this costs what reading a broken file cost before libyaml (a large file keeps
    libyaml's words). Constructor errors come from PyYAML's Python constructor either way
    and are used as they are.
    """
    error = fast_error
    if _BaseLoader is not yaml.SafeLoader and len(text) <= _PURE_WORDING_MAX and not isinstance(
            fast_error, yaml.constructor.ConstructorError):
        try:
            yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            error = exc
    mark = getattr(error, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    return line, _clip(getattr(error, "problem", None) or str(error))


_COMPLEX_KEY = object()
"""A mapping key that is itself a collection or an alias: no path runs through it."""
_NODE_EVENTS = (yaml.ScalarEvent, yaml.AliasEvent, yaml.MappingStartEvent,
                yaml.SequenceStartEvent)


class WantedPaths:
    """The wanted paths a one-pass line scan has not left behind yet (the scan may stop
    once no more are open than unfinished)."""

    def __init__(self, wanted: set[Loc]) -> None:
        self._kids: dict[Loc, list[Loc]] = {}
        for path in wanted:
            if path:
                self._kids.setdefault(path[:-1], []).append(path)
        self.unfinished = set(wanted)

    def finish(self, loc: Loc) -> None:
        """A wanted path is behind the pass: so is every wanted path below it."""
        todo = [loc]
        while todo:
            done = todo.pop()
            if done in self.unfinished:
                self.unfinished.discard(done)
                todo.extend(self._kids.get(done, ()))


def scan_lines(text: str, wanted: set[Loc], *, repeated: bool
                ) -> tuple[dict[Loc, int], list[tuple[Loc, int]]]:
    """The line of each path in ``wanted`` (which holds every prefix of each path, as
    ``ProblemList.wanted`` makes it) and, when ``repeated``, each key written twice in its
    mapping with the line of the repetition.

    One pass over libyaml's events of a text already known to parse: no node tree, and
    memory for the open collections only, whatever the size of the file. A mapping
    entry's line is its key's; a subtree no wanted path runs into is passed over, and
    unless repeated keys are looked for, the pass stops once every wanted path is behind
    it (the first problems of a 15 MB file are found without reading it all again).
    """
    lines: dict[Loc, int] = {}
    dups: list[tuple[Loc, int]] = []
    pending = WantedPaths(wanted)
    finish, unfinished = pending.finish, pending.unfinished
    open_wanted = 0  # open collections whose path is wanted: unfinished until they end
    # An open collection: [its path (None: nothing wanted below), next key or index,
    # keys seen (mappings, when repeated), is a mapping, is itself a mapping's key]
    stack: list[list[Any]] = []
    loader: Any = _BaseLoader(text)
    next_event = loader.get_event
    try:
        while True:
            event = next_event()
            kind = event.__class__
            if kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                done = stack.pop()
                if done[4]:
                    stack[-1][1] = _COMPLEX_KEY
                elif done[0] is not None and done[0] in wanted:
                    open_wanted -= 1
                    finish(done[0])
                    if not repeated and len(unfinished) <= open_wanted:
                        break
                continue
            if kind is yaml.StreamEndEvent:
                break
            if kind not in _NODE_EVENTS:
                continue
            line = event.start_mark.line + 1
            loc: Loc | None = ()
            if stack:
                top = stack[-1]
                base = top[0]
                if not top[3]:  # a sequence item
                    index = top[1]
                    top[1] = index + 1
                    loc = None if base is None else (*base, index)
                elif top[1] is _EXPECT_KEY:  # a key
                    if kind is yaml.ScalarEvent:
                        key = event.value
                        top[1] = key
                        if base is not None:
                            here = (*base, key)
                            if repeated:
                                if key in top[2]:
                                    dups.append((here, line))
                                top[2].add(key)
                            if here in wanted and here not in lines:
                                lines[here] = line
                    elif kind is yaml.AliasEvent:
                        top[1] = _COMPLEX_KEY
                    else:
                        stack.append([None, _EXPECT_KEY if kind is yaml.MappingStartEvent
                                      else 0, None, kind is yaml.MappingStartEvent, True])
                    continue
                else:  # a mapping value: its line is its key's, recorded above
                    key = top[1]
                    top[1] = _EXPECT_KEY
                    loc = None if base is None or key is _COMPLEX_KEY else (*base, key)
            is_wanted = loc is not None and loc in wanted
            if loc is not None and is_wanted and loc not in lines:
                lines[loc] = line
            if kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                inner = loc if is_wanted or (repeated and loc is not None) else None
                is_map = kind is yaml.MappingStartEvent
                stack.append([inner, _EXPECT_KEY if is_map else 0,
                              set() if is_map and inner is not None else None, is_map, False])
                open_wanted += is_wanted
            elif is_wanted and loc is not None:
                finish(loc)
                if not repeated and len(unfinished) <= open_wanted:
                    break
    finally:
        loader.dispose()
    return lines, dups


def _fmt(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if len(part) <= SHOWN_CHARS else shown(part)
            out += f".{name}" if out else name
    return out


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """The topology (pure core) and the settings of the adapters around it."""

    topology: Topology
    ocpp: OcppSpec
    passwords: dict[str, str]
    """Charger id -> password hash, for chargers that have one."""
    meters: tuple[MeterSpec, ...] = ()
    mqtt: MqttSpec | None = None
    api: ApiSpec = field(default_factory=ApiSpec)
    demand_response: DemandResponseSpec = field(default_factory=DemandResponseSpec)
    """Demand-response settings (used when the site declares ``zones:``)."""
    frequency_response: FrequencyResponseSpec | None = None
    """Droop frequency response, when the site file has the block."""
    charge_planning: ChargePlanningSpec | None = None
    """Live charge planning, when the site file has the block."""
    regulation: RegulationSpec | None = None
    """Area regulation from the meters, when the site file has the block."""
    billing: BillingSpec | None = None
    """Interval billing and its tariff (``gridshare bill``), when the file has the block."""
    telemetry: TelemetrySpec | None = None
    """Meter telemetry ingest settings (``telemetry:``), when the file has the block."""
    ami_meters: tuple[MeterSpec, ...] = ()
    """The utility (AMI) meters of ``meters:`` (no ``source``; ``meters`` holds the rest)."""
    openevse: dict[str, OpenEvseSpec] = field(default_factory=dict)
    """Charger id -> its box, for the chargers with ``driver: openevse``."""


def parse_site(text: str, source: str = "<string>") -> Topology:
    """Validate a site YAML document and build its topology; raise ConfigError."""
    return parse_site_config(text, source).topology


def parse_site_config(text: str, source: str = "<string>") -> SiteConfig:
    """Validate a whole site file: topology and adapter settings; raise ConfigError."""
    with _gc_paused():
        return _parse_site_config(text, source)


def read_mapping(text: str, source: str, keys: str) -> tuple[dict[str, Any], bool]:
    """A YAML document that must be a mapping (``keys`` names what it holds, for the
    message), and whether it needs line numbers read back (repeated keys); raise
    ConfigError in one line when it is not valid YAML or not a mapping."""
    try:
        data, needs_lines = _read_yaml(text)
    except yaml.YAMLError as exc:
        line, problem = _yaml_problem(text, exc)
        raise ConfigError([ConfigIssue(source, line, "", f"not valid YAML: {problem}")]) from exc
    except (ValueError, OverflowError) as exc:
        # what PyYAML's constructors raise past their own checks: a date like 2026-13-45,
        # an integer of more than 4,300 digits
        raise ConfigError([ConfigIssue(source, None, "",
                                       f"not valid YAML: {value_problem(exc)}")]) from exc
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(source, 1, "", f"expected a mapping with {keys}")])
    return data, needs_lines


def _parse_site_config(text: str, source: str) -> SiteConfig:
    data, needs_lines = read_mapping(text, source, "site, groups, chargers")
    problems = ProblemList(source)
    spec = _check_site(data, problems)
    problems.raise_if_any(text, duplicates=needs_lines)
    assert spec is not None
    return SiteConfig(_build(spec), spec.ocpp,
                      {c.id: c.password_hash for c in spec.chargers if c.password_hash},
                      tuple(m for m in spec.meters if not m.is_ami), spec.mqtt, spec.api,
                      spec.demand_response, spec.frequency_response, spec.charge_planning,
                      spec.regulation, spec.billing, spec.telemetry,
                      tuple(m for m in spec.meters if m.is_ami),
                      {c.id: c.openevse for c in spec.chargers if c.openevse is not None})


def _clean_loc(loc: tuple[Any, ...]) -> Loc:
    """Drop pydantic's union-branch markers (``int``, ``list[ConnectorSpec]``)."""
    return tuple(p for p in loc if isinstance(p, int) or not (
        isinstance(p, str) and (p in ("int", "constrained-int") or "[" in p or p.startswith(
            "function-"))))


_M = TypeVar("_M", bound=BaseModel)


def _validated(model: type[_M], raw: Any, loc: Loc, problems: ProblemList) -> _M | None:
    """``raw`` as ``model``, or None with its problems recorded under ``loc``."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        _schema_problems(exc, loc, problems)
        return None


def _schema_problems(exc: ValidationError, base: Loc, problems: ProblemList) -> None:
    """pydantic's errors of one entry, at their paths in the file, values cut short."""
    if problems.full:
        problems.skip(exc.error_count())
        return
    for err in exc.errors(include_url=False):
        loc = (*base, *_clean_loc(err["loc"]))
        kind = err["type"]
        if kind in ("model_type", "dict_type", "model_attributes_type"):
            msg = f"expected a mapping (got {shown(err.get('input'))})"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if kind != "missing" and "input" in err and not isinstance(err["input"], dict | list):
                msg += f" (got {shown(err['input'])})"
        problems.add(loc, msg)


def load_site(path: str | Path, max_size: int = DEFAULT_MAX_SIZE) -> Topology:
    return load_site_config(path, max_size).topology


def load_site_config(path: str | Path, max_size: int = DEFAULT_MAX_SIZE) -> SiteConfig:
    p = Path(path)
    config = parse_site_config(read_text(p, max_size), str(p))
    tls = config.ocpp.tls
    if tls is not None:  # relative paths are relative to the site file
        resolved = TlsSpec(
            certfile=p.parent / tls.certfile, keyfile=p.parent / tls.keyfile,
            cafile=None if tls.cafile is None else p.parent / tls.cafile)
        missing = [f for f in (resolved.certfile, resolved.keyfile, resolved.cafile)
                   if f is not None and not f.is_file()]
        if missing:
            raise ConfigError([ConfigIssue(str(p), None, "ocpp.tls", f"no such file: {f}")
                               for f in missing])
        config = replace(config, ocpp=config.ocpp.model_copy(update={"tls": resolved}))
    mqtt = config.mqtt
    if mqtt is not None and (mqtt.password_file is not None or mqtt.cafile is not None):
        config = replace(config, mqtt=mqtt.model_copy(update={
            "password_file": None if mqtt.password_file is None
            else p.parent / mqtt.password_file,
            "cafile": None if mqtt.cafile is None else p.parent / mqtt.cafile}))
    if any(o.password_file is not None for o in config.openevse.values()):
        config = replace(config, openevse={
            cid: o if o.password_file is None
            else o.model_copy(update={"password_file": p.parent / o.password_file})
            for cid, o in config.openevse.items()})
    openadr = config.demand_response.openadr
    if openadr is not None:
        files = {name: p.parent / value for name in ("cert", "key", "passphrase_file", "ca_file")
                 if (value := getattr(openadr, name)) is not None}
        if files:
            config = replace(config, demand_response=config.demand_response.model_copy(
                update={"openadr": openadr.model_copy(update=files)}))
    billing = config.billing
    if billing is not None and billing.tariff_file is not None:
        tariff_file = p.parent / billing.tariff_file
        if not tariff_file.is_file():
            raise ConfigError([ConfigIssue(str(p), None, "billing.tariff_file",
                                           f"no such file: {tariff_file}")])
        config = replace(config, billing=billing.model_copy(
            update={"tariff_file": tariff_file}))
        load_tariff_file(tariff_file, billing)  # checked now: its problems with its lines
    return config


# --- one pass: each entry validated on its own, cross-checks on what parsed ---------------


def _raw_id(value: Any) -> str | None:
    """An id as written, when it is a valid id (cross-checks still use the ids of entries
    that failed validation for another reason)."""
    if isinstance(value, str) and 0 < len(value) <= 64 and _ID_RE.match(value):
        return value
    return None


_ID_RE = re.compile(_ID_PATTERN)


@dataclass(slots=True)
class _GroupEntry:
    id: str | None
    loc: Loc
    nested_parent: str | None
    parent: str | None
    """As written under ``parent:``."""
    chargers: list[tuple[int, str]]
    meter: str | None
    phases: int | None

    @property
    def effective_parent(self) -> str | None:
        return self.parent if self.parent is not None else self.nested_parent


@dataclass(slots=True)
class _ChargerEntry:
    id: str | None
    loc: Loc
    spec: ChargerSpec | None
    phases: int | None
    phase: str | None
    zone: str | None = None
    """As written, for an entry that failed validation (a valid one's is ``spec.zone``)."""


@dataclass(slots=True)
class _Site:
    head: _SiteHead | None
    groups: list[_GroupEntry] = field(default_factory=list)
    chargers: list[_ChargerEntry] = field(default_factory=list)
    meters: list[tuple[str | None, Loc, MeterSpec | None]] = field(default_factory=list)
    zones: list[tuple[str | None, Loc]] = field(default_factory=list)
    mqtt_declared: bool = False
    telemetry_declared: bool = False


def _list_of(data: dict[str, Any], key: str, problems: ProblemList) -> list[Any]:
    raw = data.get(key, [])
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        problems.add((key,), f"expected a list (got {shown(raw)})")
        return []
    return raw


def _check_site(data: dict[str, Any], problems: ProblemList) -> SiteSpec | None:
    """Every problem of the site file's data, in one pass; the spec when there is none.

    A file that validates whole (the usual case) is validated in one call; only a file
    with a schema error is validated again entry by entry to find all of its problems.
    """
    try:
        whole = SiteSpec.model_validate(data)
    except ValidationError:
        return _check_site_entries(data, problems)
    site = _Site(whole, mqtt_declared=whole.mqtt is not None,
                 telemetry_declared=whole.telemetry is not None)
    for g, loc, nested_parent in _walk(whole.groups, ("groups",), None):
        site.groups.append(_GroupEntry(g.id, loc, nested_parent, g.parent,
                                       list(enumerate(g.chargers)), g.meter, g.phases))
    site.chargers = [_ChargerEntry(c.id, ("chargers", i), c, c.phases, c.phase)
                     for i, c in enumerate(whole.chargers)]
    site.meters = [(m.id, ("meters", i), m) for i, m in enumerate(whole.meters)]
    site.zones = [(z.id, ("zones", i)) for i, z in enumerate(whole.zones)]
    _cross_check(site, problems)
    return None if problems.count else whole


def _check_site_entries(data: dict[str, Any], problems: ProblemList) -> SiteSpec | None:
    """Each entry validated on its own, then the cross-checks on every readable one."""
    head = _validated(_SiteHead, {k: v for k, v in data.items() if k not in _LISTS}, (),
                      problems)
    site = _Site(head, mqtt_declared=data.get("mqtt") is not None,
                 telemetry_declared=data.get("telemetry") is not None)
    if "groups" not in data:
        problems.add(("groups",), "Field required")
    raw_groups = _list_of(data, "groups", problems)
    if "groups" in data and isinstance(raw_groups, list) and not raw_groups:
        problems.add(("groups",), "needs at least one group")
    groups = _group_entries(raw_groups, ("groups",), None, problems, site.groups)
    chargers: list[ChargerSpec] = []
    for i, item in enumerate(_list_of(data, "chargers", problems)):
        loc: Loc = ("chargers", i)
        spec = _validated(ChargerSpec, item, loc, problems)
        if spec is not None:
            chargers.append(spec)
            site.chargers.append(_ChargerEntry(spec.id, loc, spec, spec.phases, spec.phase))
        elif isinstance(item, dict):
            phases = item.get("phases", 3)
            site.chargers.append(_ChargerEntry(
                _raw_id(item.get("id")), loc, None,
                phases if phases in (1, 3) and not isinstance(phases, bool) else None,
                item.get("phase") if item.get("phase") in ("L1", "L2", "L3") else None,
                _raw_id(item.get("zone"))))
    meters: list[MeterSpec] = []
    for i, item in enumerate(_list_of(data, "meters", problems)):
        loc = ("meters", i)
        meter = _validated(MeterSpec, item, loc, problems)
        if meter is not None:
            meters.append(meter)
            site.meters.append((meter.id, loc, meter))
        elif isinstance(item, dict):
            site.meters.append((_raw_id(item.get("id")), loc, None))
    zones: list[ZoneSpec] = []
    for i, item in enumerate(_list_of(data, "zones", problems)):
        loc = ("zones", i)
        zone = _validated(ZoneSpec, item, loc, problems)
        if zone is not None:
            zones.append(zone)
            site.zones.append((zone.id, loc))
        elif isinstance(item, dict):
            site.zones.append((_raw_id(item.get("id")), loc))
    _cross_check(site, problems)
    if problems.count or head is None:
        return None
    return SiteSpec.model_construct(**dict(head), groups=groups, chargers=chargers,
                                    meters=meters, zones=zones)


def _group_entries(raw: list[Any], loc: Loc, nested_parent: str | None,
                   problems: ProblemList, out: list[_GroupEntry]) -> list[GroupSpec]:
    """Validate each group of a list on its own (its subgroups apart from it), noting
    every group, good or bad, in ``out`` for the cross-checks."""
    specs = []
    for i, item in enumerate(raw):
        here = (*loc, i)
        if not isinstance(item, dict):
            problems.add(here, f"expected a mapping with id and max_current (got "
                               f"{shown(item)})")
            continue
        own = {k: v for k, v in item.items() if k != "groups"}
        spec = _validated(GroupSpec, own, here, problems)
        if spec is not None:
            entry = _GroupEntry(spec.id, here, nested_parent, spec.parent,
                                list(enumerate(spec.chargers)), spec.meter, spec.phases)
        else:
            raw_chargers = item.get("chargers")
            phases = item.get("phases", 3)
            meter = item.get("meter")
            entry = _GroupEntry(
                _raw_id(item.get("id")), here, nested_parent, _raw_id(item.get("parent")),
                [(j, c) for j, c in enumerate(raw_chargers) if isinstance(c, str)]
                if isinstance(raw_chargers, list) else [],
                meter if isinstance(meter, str) else None,
                phases if phases in (1, 3) and not isinstance(phases, bool) else None)
        out.append(entry)
        sub = item.get("groups")
        children: list[GroupSpec] = []
        if isinstance(sub, list):
            children = _group_entries(sub, (*here, "groups"), entry.id, problems, out)
        elif sub is not None:
            problems.add((*here, "groups"), f"expected a list of groups (got {shown(sub)})")
        if spec is not None:
            specs.append(spec.model_copy(update={"groups": children}) if children else spec)
    return specs


# --- cross-references --------------------------------------------------------------------


def _walk(groups: list[GroupSpec], loc: Loc, parent: str | None
          ) -> Iterator[tuple[GroupSpec, Loc, str | None]]:
    for i, g in enumerate(groups):
        here = (*loc, i)
        yield g, here, parent
        yield from _walk(g.groups, (*here, "groups"), g.id)


def _cross_check(site: _Site, problems: ProblemList) -> None:
    """References, duplicates, cycles, orphans and wiring, over every entry whose id is
    readable (entries that failed validation count too, so their ids are not reported
    again as unknown)."""
    bad = problems.add
    billing = site.head.billing if site.head is not None else None
    if billing is not None and billing.tariff is not None:
        for loc, message in tariff_problems(billing.tariff, ("billing", "tariff"), billing)[1]:
            bad(loc, message)
    groups: dict[str, _GroupEntry] = {}
    for g in site.groups:
        if g.id is None:
            continue
        if g.id in groups:
            bad((*g.loc, "id"), f"duplicate group id {g.id!r} (first at "
                f"{_fmt(groups[g.id].loc)})")
            continue
        if g.parent is not None and g.nested_parent is not None and g.parent != g.nested_parent:
            bad((*g.loc, "parent"), f"parent {g.parent!r} contradicts nesting under "
                f"{g.nested_parent!r}")
        groups[g.id] = g
    for g in groups.values():
        parent = g.effective_parent
        if parent is not None and parent not in groups:
            bad((*g.loc, "parent"), f"unknown parent group {parent!r}")
    cycles: set[frozenset[str]] = set()
    for gid, g in groups.items():  # cycles through parent references, each named once
        seen = [gid]
        cur = g.effective_parent
        while cur is not None and cur in groups:
            if cur in seen:
                members = frozenset(seen[seen.index(cur):])
                if cur == gid and members not in cycles:
                    cycles.add(members)
                    bad((*g.loc, "parent"),
                        "cycle in group parents: " + " -> ".join([*seen, cur]))
                break
            seen.append(cur)
            cur = groups[cur].effective_parent
    chargers: dict[str, _ChargerEntry] = {}
    for c in site.chargers:
        if c.id is None:
            continue
        if c.id in chargers:
            bad((*c.loc, "id"), f"duplicate charger id {c.id!r} (first at "
                f"{_fmt(chargers[c.id].loc)})")
        else:
            chargers[c.id] = c
        if c.id in groups:
            bad((*c.loc, "id"), f"id {c.id!r} is also a group id")
    placed: dict[str, tuple[Loc, str]] = {}
    for gid, g in groups.items():
        for j, cid in g.chargers:
            where = (*g.loc, "chargers", j)
            if cid not in chargers:
                bad(where, f"unknown charger {shown(cid)}")
                continue
            if cid in placed:
                bad(where, f"charger {cid!r} is already in group at {_fmt(placed[cid][0])}")
                continue
            placed[cid] = (where, gid)
    for cid, c in chargers.items():
        if cid not in placed:
            bad((*c.loc, "id"), f"charger {cid!r} is in no group: nothing would limit it")
    _check_wiring(groups, chargers, placed, problems)
    voltage = site.head.voltage if site.head is not None else 230.0
    for c in chargers.values():
        if c.spec is not None and c.spec.driver == "openevse" and not site.mqtt_declared:
            bad((*c.loc, "driver"), "driver openevse needs the site's mqtt: {url: ...} "
                "(the box's status topics are read there)")
    for c in chargers.values():
        spec = c.spec
        if spec is None or spec.failsafe_current == 0:
            continue
        most = min(spec.max_current if spec.max_current is not None else math.inf,
                   spec.max_power * 1000.0 / (voltage * spec.phases)
                   if spec.max_power is not None else math.inf)
        if spec.failsafe_current > most:
            kind = "max_current" if spec.max_current == most else \
                f"max_power {spec.max_power:g} kW at {voltage:g} V"
            bad((*c.loc, "failsafe_current"),
                f"failsafe_current {spec.failsafe_current:g} A is above the charger's "
                f"maximum of {most:.4g} A ({kind}); the charger would be told to draw it "
                f"whenever it loses contact")
    meters: dict[str, Loc] = {}
    ami: set[str] = set()
    for mid, loc, meter in site.meters:
        if mid is None:
            continue
        if mid in meters:
            bad((*loc, "id"), f"duplicate meter id {mid!r} (first at {_fmt(meters[mid])})")
        else:
            meters[mid] = loc
        if meter is not None and meter.source == "mqtt" and not site.mqtt_declared:
            bad((*loc, "source"), "source mqtt needs the site's mqtt: {url: ...}")
        if meter is not None and meter.is_ami:
            ami.add(mid)
    for g in groups.values():
        if g.meter is not None and g.meter not in meters:
            bad((*g.loc, "meter"), f"unknown meter {shown(g.meter)} (declare it under meters:)")
        elif g.meter is not None and g.meter in ami:
            bad((*g.loc, "meter"), f"meter {g.meter!r} is an AMI meter (no source): a group's "
                "meter needs source mqtt, http or ocpp")
    if site.telemetry_declared and not site.mqtt_declared:
        bad(("telemetry",), "telemetry needs the site's mqtt: {url: ...}")
    _check_zones(site, chargers, problems)
    _check_frequency(site, chargers, problems)
    _check_regulation(site, problems)
    head = site.head
    if head is not None and head.ocpp.security_profile in (1, 2) \
            and not head.ocpp.allow_auto_register:
        for c in site.chargers:
            if c.spec is not None and c.spec.password_hash is None \
                    and c.spec.driver == "ocpp":
                bad((*c.loc, "id"),
                    f"security_profile {head.ocpp.security_profile} needs a password_hash "
                    f"for {c.id!r} (gridshare hash-password)")


def _check_zones(site: _Site, chargers: dict[str, _ChargerEntry],
                 problems: ProblemList) -> None:
    """Duplicate zone ids, and chargers naming a zone that is not declared (a zone that
    failed validation for another reason still counts as declared)."""
    zones: dict[str, Loc] = {}
    for zid, loc in site.zones:
        if zid is None:
            continue
        if zid in zones:
            problems.add((*loc, "id"), f"duplicate zone id {zid!r} (first at "
                                       f"{_fmt(zones[zid])})")
        else:
            zones[zid] = loc
    for c in chargers.values():
        zone = c.spec.zone if c.spec is not None else c.zone
        if zone is not None and zone not in zones:
            known = ", ".join(sorted(zones)) if zones else "none declared"
            problems.add((*c.loc, "zone"), f"unknown zone {shown(zone)} (declare it under "
                                           f"zones:; zones: {known})")
    openadr = site.head.demand_response.openadr if site.head is not None else None
    for path, zone in openadr.zones_named() if openadr is not None else ():
        if zone not in zones:
            known = ", ".join(sorted(zones)) if zones else "none declared"
            problems.add(("demand_response", "openadr", *path),
                         f"unknown zone {shown(zone)} (zones: {known})")


def _check_frequency(site: _Site, chargers: dict[str, _ChargerEntry],
                     problems: ProblemList) -> None:
    """The units of ``frequency_response``: a charger declared in this file and able to
    carry the unit's kW, each unit once, MQTT declared for the topics."""
    spec = site.head.frequency_response if site.head is not None else None
    if spec is None:
        return
    base: Loc = ("frequency_response",)
    if not site.mqtt_declared:
        problems.add((*base, "source", "mqtt_topic"),
                     "an mqtt_topic needs the site's mqtt: {url: ...}")
    voltage = site.head.voltage if site.head is not None else 230.0
    seen: dict[str, Loc] = {}
    for i, unit in enumerate(spec.units):
        loc: Loc = (*base, "units", i)
        kind = "charger" if unit.charger is not None else "battery"
        if unit.id in seen:
            problems.add((*loc, kind), f"unit {unit.id!r} is listed twice (first at "
                                       f"{_fmt(seen[unit.id])})")
            continue
        seen[unit.id] = loc
        if unit.charger is None:
            if unit.battery in chargers:
                problems.add((*loc, "battery"), f"battery id {unit.battery!r} is also a "
                                                f"charger id")
            continue
        c = chargers.get(unit.charger)
        if c is None:
            known = ", ".join(sorted(chargers)[:10]) if chargers else "none declared"
            problems.add((*loc, "charger"), f"unknown charger {shown(unit.charger)} "
                                            f"(declare it under chargers:; chargers: {known})")
            continue
        if c.spec is None:
            continue
        most = min(c.spec.max_power if c.spec.max_power is not None else math.inf,
                   c.spec.max_current * voltage * c.spec.phases / 1000.0
                   if c.spec.max_current is not None else math.inf)
        for name in ("max_charge_kw", "max_discharge_kw"):
            value = getattr(unit, name)
            if value > most + 1e-9:
                problems.add((*loc, name), f"{name} {value:g} kW is above charger "
                                           f"{unit.charger!r}'s maximum of {most:.4g} kW")


def _check_regulation(site: _Site, problems: ProblemList) -> None:
    """``regulation`` dispatches batteries of ``frequency_response.units`` over MQTT."""
    spec = site.head.regulation if site.head is not None else None
    if spec is None:
        return
    assert site.head is not None
    freq = site.head.frequency_response
    batteries = [u.id for u in freq.units if u.battery is not None] if freq else []
    if not site.mqtt_declared:
        problems.add(("regulation",), "regulation publishes over MQTT: it needs the site's "
                     "mqtt: {url: ...}")
    if not batteries:
        problems.add(("regulation",), "no battery to dispatch: declare batteries under "
                     "frequency_response.units (with their setpoint_topic)")
    zones = {zid for zid, _ in site.zones}
    if spec.load_topics is None:
        _check_regulation_area(site, spec, zones, problems)
    if freq is not None and spec.nominal_hz is not None and \
            spec.nominal_hz != freq.nominal_hz:
        problems.add(("regulation", "nominal_hz"), f"{spec.nominal_hz} Hz, but "
                     f"frequency_response.nominal_hz is {freq.nominal_hz} Hz")
    for i, uid in enumerate(spec.units or ()):
        if uid not in batteries:
            problems.add(("regulation", "units", i), f"unknown battery {shown(uid)} "
                         f"(frequency_response batteries: {', '.join(batteries) or 'none'})")


def regulation_area_level(spec: RegulationSpec, zones: Iterable[str | None],
                          ami_meters: Iterable[MeterSpec]) -> str | None:
    """What a ``regulation.area`` without ``load_topics`` names: ``zone``, ``feeder``,
    ``substation`` or ``region`` (``area_level``, else the first that has that id), or
    None when nothing does."""
    meters = list(ami_meters)
    places = {level: {getattr(m, level) for m in meters} - {None}
              for level in ("feeder", "substation", "region")}
    if spec.area_level is not None:
        known = set(zones) if spec.area_level == "zone" else places[spec.area_level]
        return spec.area_level if spec.area in known else None
    if spec.area in set(zones):
        return "zone"
    return next((level for level, keys in places.items() if spec.area in keys), None)


def _check_regulation_area(site: _Site, spec: RegulationSpec, zones: set[str | None],
                           problems: ProblemList) -> None:
    """The area must be a zone or a place of the AMI meters; AMI demand windows must
    close well within the deadline."""
    ami = [m for _, _, m in site.meters if m is not None and m.is_ami]
    level = regulation_area_level(spec, zones, ami)
    if level is None:
        names = [f"zones: {', '.join(sorted(z for z in zones if z)) or 'none'}"]
        for lv in ("feeder", "substation", "region"):
            keys = sorted({getattr(m, lv) for m in ami} - {None})
            names.append(f"{lv}s: {', '.join(keys) or 'none'}")
        if spec.area_level is None:
            what = "no zone of the site nor a feeder, substation or region of its AMI meters"
        elif spec.area_level == "zone":
            what = "no zone of the site"
        else:
            what = f"no {spec.area_level} of the site's AMI meters"
        problems.add(("regulation", "area"), f"area {shown(spec.area)} is {what} "
                     f"({'; '.join(names)}); declare it, or give load_topics")
        return
    if level == "zone":
        return
    telemetry = site.head.telemetry if site.head is not None else None
    tele = telemetry or TelemetrySpec()
    if tele.window + tele.lateness >= spec.deadline_s:
        problems.add(("regulation", "area"),
                     f"the demand windows of {level} {spec.area!r} close "
                     f"{tele.window:g} + {tele.lateness:g} s (telemetry window + lateness) "
                     f"after they start: not within deadline_s {spec.deadline_s:g} s; "
                     "set e.g. telemetry: {window: 1, lateness: 0.5}")


def _check_wiring(groups: dict[str, _GroupEntry], chargers: dict[str, _ChargerEntry],
                  placed: dict[str, tuple[Loc, str]], problems: ProblemList) -> None:
    """Chargers a 1-phase group cannot feed.

    The core keeps a group's limit on each of L1, L2 and L3 apart (``Group`` names no
    line), so a 1-phase group is read as one line and its neutral: every charger under it,
    at any depth, must be 1-phase and on one and the same line. Chargers on two lines
    under it would each be allowed its whole limit, twice what the wire carries.
    """
    children: dict[str, list[str]] = {gid: [] for gid in groups}
    for gid, g in groups.items():
        parent = g.effective_parent
        if parent in children and parent != gid:
            children[parent].append(gid)
    in_group: dict[str, list[str]] = {gid: [] for gid in groups}
    for cid, (_, gid) in placed.items():
        in_group[gid].append(cid)

    def one_phase_ancestor(gid: str) -> bool:
        seen = {gid}
        cur = groups[gid].effective_parent
        while cur is not None and cur in groups and cur not in seen:
            if groups[cur].phases == 1:
                return True
            seen.add(cur)
            cur = groups[cur].effective_parent
        return False

    for gid, g in groups.items():
        if g.phases != 1 or one_phase_ancestor(gid):
            continue  # the outermost 1-phase group checks its whole subtree
        first: tuple[str, str] | None = None
        stack, seen = [gid], set()
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            stack.extend(reversed(children[cur]))
            for cid in in_group[cur]:
                c = chargers[cid]
                where = placed[cid][0]
                if c.phases == 3:
                    problems.add(where, f"3-phase charger {cid!r} in 1-phase group {gid!r}")
                elif c.phases == 1 and c.phase is not None:
                    if first is None:
                        first = (cid, c.phase)
                    elif c.phase != first[1]:
                        problems.add(
                            (*c.loc, "phase"),
                            f"1-phase charger {cid!r} on {c.phase} under 1-phase group "
                            f"{gid!r}, whose charger {first[0]!r} is on {first[1]}: a 1-phase "
                            f"group is one line, so every charger under it must be on the "
                            f"same line (or make {gid!r} 3-phase)")


def _build(spec: SiteSpec) -> Topology:
    groups: dict[str, Group] = {}
    charger_group: dict[str, str] = {}
    flat = list(_walk(spec.groups, ("groups",), None))
    children: dict[str, list[str]] = {g.id: [] for g, _, _ in flat}
    parents: dict[str, str | None] = {}
    for g, _, nested_parent in flat:
        parent = g.parent if g.parent is not None else nested_parent
        parents[g.id] = parent
        if parent is not None:
            children[parent].append(g.id)
        for cid in g.chargers:
            charger_group[cid] = g.id

    by_id = {g.id: g for g, _, _ in flat}

    def policy_of(gid: str) -> Policy:
        cur: str | None = gid
        while cur is not None:
            own = by_id[cur].policy
            if own is not None:
                return own
            cur = parents[cur]
        return spec.policy

    for g, _, _ in flat:
        groups[g.id] = Group(
            id=g.id, max_current=g.max_current, max_power_kw=g.max_power, phases=g.phases,
            policy=policy_of(g.id), parent=parents[g.id], groups=tuple(children[g.id]),
            chargers=tuple(g.chargers), meter=g.meter)
    chargers: dict[str, Charger] = {}
    voltage = spec.voltage
    for c in spec.chargers:
        cid, phases, max_power = c.id, c.phases, c.max_power
        amps_from_kw = (max_power * 1000.0 / (voltage * phases)
                        if max_power is not None else math.inf)
        max_a = min(c.max_current if c.max_current is not None else math.inf, amps_from_kw)
        count = c.connectors
        if isinstance(count, int):  # the common case, without a generator per charger
            low = c.min_current
            conns = tuple([Connector(cid, n, max_a, low) for n in range(1, count + 1)])
        else:
            conns = _connectors(c, max_a, voltage)
        chargers[cid] = Charger(
            id=cid, phases=phases, phase=Phase[c.phase] if c.phase else None,
            max_current=max_a, min_current=c.min_current,
            failsafe_current=c.failsafe_current, priority=c.priority, connectors=conns,
            max_power_kw=max_power, group=charger_group[cid], zone=c.zone,
            max_station_kw=c.max_station_kw, contract_max_kw=c.contract_max_kw, v2x=c.v2x)
    roots = tuple(g.id for g, _, _ in flat if parents[g.id] is None)
    zones = {z.id: Zone(z.id, z.capacity_kw) for z in spec.zones}
    return Topology(site=spec.site, voltage=spec.voltage, policy=spec.policy, groups=groups,
                    chargers=chargers, roots=roots, rotation_interval_s=spec.rotation_interval,
                    resolution_a=spec.resolution, zones=zones)


def _connectors(c: ChargerSpec, max_a: float, voltage: float) -> tuple[Connector, ...]:
    if isinstance(c.connectors, int):
        return tuple(Connector(c.id, n, max_a, c.min_current) for n in range(1, c.connectors + 1))
    out = []
    for n, spec in enumerate(c.connectors, start=1):
        limit = max_a
        if spec.max_current is not None:
            limit = min(limit, spec.max_current)
        if spec.max_power is not None:
            limit = min(limit, spec.max_power * 1000.0 / (voltage * c.phases))
        low = spec.min_current if spec.min_current is not None else c.min_current
        out.append(Connector(c.id, n, limit, low, spec.type))
    return tuple(out)


def site_warnings(config: SiteConfig) -> list[str]:
    """What ``gridshare check`` and ``gridshare serve`` warn of in a valid site file: what
    could go wrong (failsafe currents) and settings this version reads but ignores (none
    now: ``frequency_response:`` is acted on, by the frequency service)."""
    return failsafe_warnings(config.topology)


def failsafe_warnings(topology: Topology) -> list[str]:
    """Groups that would be overloaded if every charger under them lost contact at once."""
    out = []
    for gid, group in topology.groups.items():
        amps = [0.0, 0.0, 0.0]
        for cid in topology.subtree_chargers(gid):
            ch = topology.chargers[cid]
            for p, on in enumerate(ch.phase_vector):
                amps[p] += on * ch.failsafe_current * len(ch.connectors)
        if group.max_current is not None and max(amps) > group.max_current:
            phase = Phase(amps.index(max(amps))).name
            out.append(f"group {gid}: failsafe currents add up to {max(amps):g} A on {phase}, "
                       f"above its {group.max_current:g} A limit; if every charger lost contact "
                       f"at once the limit could be exceeded")
    return out
