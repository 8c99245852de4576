"""The live control loop: site state folded from events, allocation cycles, verification."""

from gridshare.clock import Clock, FakeClock, SystemClock
from gridshare.controller.audit import AlarmRecord, AuditSink, CommandKind, CommandRecord
from gridshare.controller.loop import Controller, ControllerSettings, CycleReport
from gridshare.controller.state import Impact, SiteState, StateSettings, Violation
from gridshare.controller.views import (
    CommandView,
    ConnectorView,
    ControllerStatus,
    GroupView,
    RejectionView,
)

__all__ = [
    "AlarmRecord",
    "AuditSink",
    "Clock",
    "CommandKind",
    "CommandRecord",
    "CommandView",
    "ConnectorView",
    "Controller",
    "ControllerSettings",
    "ControllerStatus",
    "CycleReport",
    "FakeClock",
    "GroupView",
    "Impact",
    "RejectionView",
    "SiteState",
    "StateSettings",
    "SystemClock",
    "Violation",
]
