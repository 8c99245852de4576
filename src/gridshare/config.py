"""Site configuration: YAML in, a validated :class:`~gridshare.core.topology.Topology` out.

Every problem found is reported at once, each with the file, the line, the path of the
bad node (``groups[0].groups[1].max_current``) and what is wrong, so an installer fixes
the whole file in one pass instead of one error per start-up.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gridshare.core.topology import (
    Charger,
    Connector,
    ConnectorType,
    Group,
    Phase,
    Policy,
    Topology,
)

Loc = tuple[str | int, ...]
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
Amps = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveAmps = Annotated[float, Field(gt=0, allow_inf_nan=False)]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    source: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(ValueError):
    """The configuration is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConnectorSpec(_Strict):
    type: ConnectorType | None = None
    max_current: PositiveAmps | None = None
    max_power: PositiveAmps | None = None
    """kW, for DC connectors."""
    min_current: Amps | None = None


class ChargerSpec(_Strict):
    id: Id
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
        return self


class MqttSpec(_Strict):
    """The site's MQTT broker (meters, and later DR signals and telemetry)."""

    url: Annotated[str, Field(pattern=r"^mqtts?://[^/\s]+$")] = "mqtt://127.0.0.1:1883"
    """``mqtt://host[:port]`` (1883) or ``mqtts://host[:port]`` (8883, TLS)."""
    username: str | None = None
    password_file: Path | None = None
    """A file holding the password (relative to the site file); never the password itself."""
    client_id: str | None = None
    cafile: Path | None = None
    """CA to check an ``mqtts://`` broker with (default: the system's)."""


MeterUnit = Literal["A", "W", "kW"]
DotPath = Annotated[str, Field(min_length=1, max_length=200)]


class MeterSpec(_Strict):
    """A meter that measures a group's whole load (its chargers included, unless
    ``includes_chargers: false``), and where its readings come from."""

    id: Id
    source: Literal["mqtt", "http", "ocpp"]
    topic: str | None = None
    """mqtt: the topic its readings are published on (JSON, or a plain number)."""
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """http: a JSON endpoint polled every ``interval`` seconds."""
    charger: Id | None = None
    """ocpp: the charge point whose MeterValues are read: a charger of this file (its
    connector 0 measures the whole charger's supply) or a dedicated meter that connects to
    the central system as a charge point with this id."""
    connector: Annotated[int, Field(ge=0)] = 0
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
        return self


class SiteSpec(_Strict):
    site: Id
    voltage: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = 230.0
    policy: Policy = Policy.EQUAL
    rotation_interval: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 900.0
    """Seconds a set of paused cars stays paused before the pause rotates."""
    resolution: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.1
    """Setpoint step in A."""
    groups: Annotated[list[GroupSpec], Field(min_length=1)]
    chargers: list[ChargerSpec] = []
    ocpp: OcppSpec = OcppSpec()
    mqtt: MqttSpec | None = None
    meters: list[MeterSpec] = []


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


def _yaml_problem(text: str, fast_error: yaml.YAMLError) -> tuple[int | None, str]:
    """Line and wording of a YAML error, as the pure-Python parser words it.

    libyaml words its scanner, parser and composer errors differently ("did not find
    expected ..."); the error path reads the text again with the pure-Python composer so
    that messages stay the same whichever parser found the problem. It stops at the error,
    so this costs what reading a broken file cost before libyaml. Constructor errors come
    from PyYAML's Python constructor either way and are used as they are.
    """
    error = fast_error
    if _BaseLoader is not yaml.SafeLoader and not isinstance(
            fast_error, yaml.constructor.ConstructorError):
        try:
            yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            error = exc
    mark = getattr(error, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    return line, getattr(error, "problem", None) or str(error)


def _line_map(node: yaml.Node, loc: Loc, out: dict[Loc, int], dups: list[tuple[Loc, int]]) -> None:
    out[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                dups.append(((*loc, name), key.start_mark.line + 1))
            seen.add(name)
            out[(*loc, name)] = key.start_mark.line + 1
            _line_map(value, (*loc, name), out, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*loc, i), out, dups)


class _Lines:
    """Line of each path of the document, from a second parse with positions, made the
    first time a problem asks for a line (a good file never pays for it)."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._lines: dict[Loc, int] | None = None
        self._dups: list[tuple[Loc, int]] = []

    def _walked(self) -> dict[Loc, int]:
        if self._lines is None:
            self._lines = {}
            loader = _FastLoader(self._text)
            try:
                root = loader.get_single_node()
            finally:
                loader.dispose()
            if root is not None:
                _line_map(root, (), self._lines, self._dups)
        return self._lines

    def repeated_keys(self) -> list[tuple[Loc, int]]:
        """Each key that repeats in its mapping, with the line of the repetition."""
        self._walked()
        return self._dups

    def __call__(self, loc: Loc) -> int | None:
        """The line of ``loc``, or of its nearest ancestor that has one."""
        lines = self._walked()
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                return lines[loc[:n]]
        return None


def _fmt(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
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


def parse_site(text: str, source: str = "<string>") -> Topology:
    """Validate a site YAML document and build its topology; raise ConfigError."""
    return parse_site_config(text, source).topology


def parse_site_config(text: str, source: str = "<string>") -> SiteConfig:
    """Validate a whole site file: topology and adapter settings; raise ConfigError."""
    with _gc_paused():
        return _parse_site_config(text, source)


def _parse_site_config(text: str, source: str) -> SiteConfig:
    try:
        data, needs_lines = _read_yaml(text)
    except yaml.YAMLError as exc:
        line, problem = _yaml_problem(text, exc)
        raise ConfigError([ConfigIssue(source, line, "", f"not valid YAML: {problem}")]) from exc
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(source, 1, "", "expected a mapping with site, groups, "
                                       "chargers")])
    line_of = _Lines(text)
    issues = ([ConfigIssue(source, line, _fmt(loc), "duplicate key")
               for loc, line in line_of.repeated_keys()] if needs_lines else [])
    try:
        spec = SiteSpec.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = _clean_loc(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] not in ("missing", "model_type") and "input" in err:
                shown = err["input"]
                if not isinstance(shown, dict | list):
                    msg += f" (got {shown!r})"
            issues.append(ConfigIssue(source, line_of(loc), _fmt(loc), msg))
        raise ConfigError(issues) from exc
    issues.extend(_cross_check(spec, source, line_of))
    if spec.ocpp.security_profile in (1, 2) and not spec.ocpp.allow_auto_register:
        for i, c in enumerate(spec.chargers):
            if c.password_hash is None:
                where: Loc = ("chargers", i, "id")
                issues.append(ConfigIssue(
                    source, line_of(where), _fmt(where),
                    f"security_profile {spec.ocpp.security_profile} needs a password_hash "
                    f"for {c.id!r} (gridshare hash-password)"))
    if issues:
        raise ConfigError(issues)
    return SiteConfig(_build(spec), spec.ocpp,
                      {c.id: c.password_hash for c in spec.chargers if c.password_hash},
                      tuple(spec.meters), spec.mqtt)


def _clean_loc(loc: tuple[Any, ...]) -> Loc:
    """Drop pydantic's union-branch markers (``int``, ``list[ConnectorSpec]``)."""
    return tuple(p for p in loc if isinstance(p, int) or not (
        isinstance(p, str) and (p in ("int", "constrained-int") or "[" in p or p.startswith(
            "function-"))))


def load_site(path: str | Path) -> Topology:
    return load_site_config(path).topology


def load_site_config(path: str | Path) -> SiteConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(p), None, "", f"cannot read: {exc.strerror}")]) from exc
    config = parse_site_config(text, str(p))
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
        config = SiteConfig(config.topology, config.ocpp.model_copy(update={"tls": resolved}),
                            config.passwords)
    return config


# --- cross-references --------------------------------------------------------------------


def _walk(groups: list[GroupSpec], loc: Loc, parent: str | None
          ) -> Iterator[tuple[GroupSpec, Loc, str | None]]:
    for i, g in enumerate(groups):
        here = (*loc, i)
        yield g, here, parent
        yield from _walk(g.groups, (*here, "groups"), g.id)


def _cross_check(spec: SiteSpec, source: str, line_of: _Lines) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []

    def bad(loc: Loc, msg: str) -> None:
        issues.append(ConfigIssue(source, line_of(loc), _fmt(loc), msg))

    groups: dict[str, tuple[GroupSpec, Loc, str | None]] = {}
    for g, loc, nested_parent in _walk(spec.groups, ("groups",), None):
        if g.id in groups:
            bad((*loc, "id"), f"duplicate group id {g.id!r} (first at "
                f"{_fmt(groups[g.id][1])})")
            continue
        if g.parent is not None and nested_parent is not None and g.parent != nested_parent:
            bad((*loc, "parent"), f"parent {g.parent!r} contradicts nesting under "
                f"{nested_parent!r}")
        groups[g.id] = (g, loc, g.parent if g.parent is not None else nested_parent)
    for _, loc, parent in groups.values():
        if parent is not None and parent not in groups:
            bad((*loc, "parent"), f"unknown parent group {parent!r}")
    # cycles through parent references
    for gid, (_, loc, _) in groups.items():
        seen = [gid]
        cur = groups[gid][2]
        while cur is not None and cur in groups:
            if cur in seen:
                bad((*loc, "parent"), "cycle in group parents: " + " -> ".join([*seen, cur]))
                break
            seen.append(cur)
            cur = groups[cur][2]
    chargers: dict[str, tuple[ChargerSpec, Loc]] = {}
    for i, c in enumerate(spec.chargers):
        if c.id in chargers:
            bad(("chargers", i, "id"), f"duplicate charger id {c.id!r} (first at "
                f"{_fmt(chargers[c.id][1])})")
        else:
            chargers[c.id] = (c, ("chargers", i))
        if c.id in groups:
            bad(("chargers", i, "id"), f"id {c.id!r} is also a group id")
    placed: dict[str, Loc] = {}
    for gid, (g, loc, _) in groups.items():
        for j, cid in enumerate(g.chargers):
            where = (*loc, "chargers", j)
            if cid not in chargers:
                bad(where, f"unknown charger {cid!r}")
                continue
            if cid in placed:
                bad(where, f"charger {cid!r} is already in group at {_fmt(placed[cid])}")
                continue
            placed[cid] = where
            if g.phases == 1 and chargers[cid][0].phases == 3:
                bad(where, f"3-phase charger {cid!r} in 1-phase group {gid!r}")
    for cid, (_, loc) in chargers.items():
        if cid not in placed:
            bad((*loc, "id"), f"charger {cid!r} is in no group: nothing would limit it")
    meters: dict[str, Loc] = {}
    for i, m in enumerate(spec.meters):
        if m.id in meters:
            bad(("meters", i, "id"), f"duplicate meter id {m.id!r} (first at "
                f"{_fmt(meters[m.id])})")
        else:
            meters[m.id] = ("meters", i)
        if m.source == "mqtt" and spec.mqtt is None:
            bad(("meters", i, "source"), "source mqtt needs the site's mqtt: {url: ...}")
    for g, loc, _ in groups.values():
        if g.meter is not None and g.meter not in meters:
            bad((*loc, "meter"), f"unknown meter {g.meter!r} (declare it under meters:)")
    return issues


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
            max_power_kw=max_power, group=charger_group[cid])
    roots = tuple(g.id for g, _, _ in flat if parents[g.id] is None)
    return Topology(site=spec.site, voltage=spec.voltage, policy=spec.policy, groups=groups,
                    chargers=chargers, roots=roots, rotation_interval_s=spec.rotation_interval,
                    resolution_a=spec.resolution)


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
