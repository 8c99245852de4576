"""The live control loop: site state folded from events, allocation cycles, verification."""

from gridshare.controller.clock import Clock, FakeClock, SystemClock
from gridshare.controller.loop import (
    AlarmRecord,
    AuditSink,
    CommandRecord,
    Controller,
    ControllerSettings,
    ControllerStatus,
    CycleReport,
)
from gridshare.controller.state import Impact, SiteState, StateSettings, Violation

__all__ = [
    "AlarmRecord",
    "AuditSink",
    "Clock",
    "CommandRecord",
    "Controller",
    "ControllerSettings",
    "ControllerStatus",
    "CycleReport",
    "FakeClock",
    "Impact",
    "SiteState",
    "StateSettings",
    "SystemClock",
    "Violation",
]
