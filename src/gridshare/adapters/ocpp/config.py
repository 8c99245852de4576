"""Configuration of the OCPP central system (CSMS).

Plain dataclasses so that the composition root can build them from validated YAML; every
check that can fail is done here, at construction, not on the first charger connect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from gridshare.ocpp_version import OcppVersion

SUPPORTED_SUBPROTOCOLS: tuple[str, ...] = (OcppVersion.V21.value, OcppVersion.V201.value,
                                           OcppVersion.V16.value)
RATE_UNITS: frozenset[str] = frozenset({"A", "W"})


@dataclass(frozen=True, slots=True)
class ChargerCredentials:
    """What we know about a charger before it connects.

    ``password_hash`` (from :func:`hash_password`) is needed for security profiles 1 and 2;
    the plain password is never stored.
    """

    password_hash: str | None = None


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Server certificate and key (PEM); ``cafile`` signs client certificates (profile 3)."""

    certfile: str | Path
    keyfile: str | Path
    cafile: str | Path | None = None


@dataclass(slots=True)
class CsmsConfig:
    """Everything the CSMS needs; units in names, seconds unless told otherwise."""

    security_profile: int = 0
    """0 none, 1 basic auth over ws, 2 TLS + basic auth, 3 mutual TLS (client certificates)."""
    chargers: dict[str, ChargerCredentials] = field(default_factory=dict)
    """Known charger ids (the last URL path segment)."""
    allow_auto_register: bool = False
    """Accept unknown ids (basic auth: the first password seen is pinned, trust on first use)."""
    pending_unknown: bool = False
    """Let unknown ids connect, answered ``Pending`` at boot and never controlled, until an
    operator declares them (:meth:`CentralSystem.declare`). With basic auth (profiles 1, 2)
    an unknown id's password cannot be checked: it is accepted as pending and never
    trusted; once declared the charger must reconnect with the declared password. With
    mutual TLS (profile 3) its certificate must still be signed by the CA and name it."""
    pending_max: int = 1000
    """How many undeclared chargers are remembered (past it, unknown ids are refused)."""
    pending_retry_s: int | None = None
    """The ``interval`` of a Pending boot answer: when the charger boots again (None: the
    heartbeat interval)."""
    tls: TlsConfig | None = None
    heartbeat_interval_s: int = 60
    """Sent in the BootNotification response."""
    offline_after_s: float | None = None
    """Silence allowance before ChargerOffline; None means 2.5 × heartbeat_interval_s."""
    command_timeout_s: float = 10.0
    command_retries: int = 2
    """Retries of a timed-out failsafe/cap (re)installation after a (re)connect, with
    exponential backoff command_backoff_s, 2×, 4×, … Setpoints get one attempt each: the
    controller owns their retries."""
    command_backoff_s: float = 0.5
    max_message_bytes: int = 65536
    subprotocols: tuple[str, ...] = SUPPORTED_SUBPROTOCOLS
    """Preference order: the first one the charger also offers wins."""
    no_subprotocol: str | None = OcppVersion.V16.value
    """The version a charger that offers no subprotocol at all is served with (many real
    ones offer none; one of ``subprotocols``); None: complete the handshake, then close
    with 1002."""
    compression: bool = False
    """Offer WebSocket permessage-deflate to chargers that ask for it. Off by default:
    OCPP frames are a few hundred bytes, and deflate costs about a third of the CPU of
    every frame written (measured: 20 → 28 µs a SetChargingProfile) plus a zlib context
    per connection; turn it on for chargers on metered links."""
    lease_s: float = 180.0
    """Default duration of a live setpoint profile; the charger falls back after it."""
    rate_unit: dict[str, str] = field(default_factory=dict)
    """Per charger "A" (default, per phase) or "W" (total, A × voltage_v × phases)."""
    phases: dict[str, int] = field(default_factory=dict)
    """Per charger number of phases used in schedules (default 3)."""
    voltage_v: float = 230.0
    """Phase-to-neutral voltage used to convert A ↔ W."""
    v2x: frozenset[str] = frozenset()
    """Chargers declared bidirectional (``v2x: true`` in the site file): only these, and
    only while connected over ``ocpp2.1``, are ever sent a discharge (see
    :meth:`CentralSystem.v2x_capable`)."""

    def __post_init__(self) -> None:
        if self.security_profile not in (0, 1, 2, 3):
            raise ValueError(f"security_profile must be 0..3, got {self.security_profile}")
        if self.security_profile >= 2 and self.tls is None:
            raise ValueError(f"security_profile {self.security_profile} needs tls")
        if self.security_profile == 3 and (self.tls is None or self.tls.cafile is None):
            raise ValueError("security_profile 3 needs tls.cafile to verify client certificates")
        unknown = set(self.subprotocols) - set(SUPPORTED_SUBPROTOCOLS)
        if not self.subprotocols or unknown:
            raise ValueError(f"subprotocols must be a non-empty subset of "
                             f"{SUPPORTED_SUBPROTOCOLS}, got {self.subprotocols}")
        if self.no_subprotocol is not None and self.no_subprotocol not in self.subprotocols:
            raise ValueError(f"no_subprotocol must be one of the subprotocols "
                             f"{self.subprotocols} or None, got {self.no_subprotocol!r}")
        if self.pending_unknown and self.allow_auto_register:
            raise ValueError("pending_unknown and allow_auto_register exclude each other: "
                             "unknown chargers are either held pending or accepted")
        if self.pending_max < 1:
            raise ValueError(f"pending_max must be at least 1, got {self.pending_max}")
        if self.pending_retry_s is not None and self.pending_retry_s < 1:
            raise ValueError(f"pending_retry_s must be at least 1, got {self.pending_retry_s}")
        for charger, unit in self.rate_unit.items():
            if unit not in RATE_UNITS:
                raise ValueError(f"rate_unit for {charger!r} must be 'A' or 'W', got {unit!r}")
        for charger, phases in self.phases.items():
            if phases not in (1, 2, 3):
                raise ValueError(f"phases for {charger!r} must be 1..3, got {phases}")
        positive = {
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "command_timeout_s": self.command_timeout_s,
            "max_message_bytes": self.max_message_bytes,
            "lease_s": self.lease_s,
            "voltage_v": self.voltage_v,
        }
        if self.offline_after_s is not None:
            positive["offline_after_s"] = self.offline_after_s
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if self.command_retries < 0 or self.command_backoff_s < 0:
            raise ValueError("command_retries and command_backoff_s must not be negative")

    @property
    def offline_after(self) -> float:
        """The silence allowance actually used, in seconds."""
        if self.offline_after_s is not None:
            return self.offline_after_s
        return 2.5 * self.heartbeat_interval_s

    def unit_of(self, charger: str) -> str:
        return self.rate_unit.get(charger, "A")

    def phases_of(self, charger: str) -> int:
        return self.phases.get(charger, 3)
