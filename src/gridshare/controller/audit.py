"""What the controller reports besides its log: every command and every alarm, for the
audit store (or any other sink)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from gridshare.drivers import CommandResult

CommandKind = Literal["decrease", "increase", "renew", "retry", "release", "failsafe"]
"""decrease: raises no connector's worst case; increase: raises it, sent only when it fits;
renew: same value before its lease ends; retry: again after a failure or an unknown
outcome; release: an idle connector held at 0 A; failsafe: the charger default. (The
setpoint kinds are :data:`gridshare.core.decide.SendKind`.)"""


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """One command and its outcome, for the audit log."""

    at: datetime
    charger: str
    connector: int
    """0 for a charger-wide command (failsafe)."""
    kind: CommandKind
    current_a: float
    previous_a: float | None
    """The connector's worst case when the command was sent (None for a failsafe)."""
    result: CommandResult
    latency_s: float


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    at: datetime
    kind: str
    """limit | guard | violation | rejected (a charger refused a setpoint: the profile in
    force before it stays and counts) | plan (check_plan refused a send step: not sent) |
    command (driver error, failsafe not installed) | internal"""
    group: str
    phase: str | None
    load: float
    limit: float
    message: str
    cleared: bool = False


class AuditSink(Protocol):
    """Where commands and alarms go besides the log (the store). Must not block."""

    def record_command(self, record: CommandRecord) -> None: ...

    def record_alarm(self, record: AlarmRecord) -> None: ...
