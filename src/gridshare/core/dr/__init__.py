"""Demand response, pure: signals, the event book, curtailment split, compliance.

No I/O and no clock: every time is passed in. The service around it lives in
:mod:`gridshare.controller.dr`.
"""

from gridshare.core.dr.book import (
    DrEvent,
    EventBook,
    EventState,
    SignalConflict,
    Submitted,
    ZoneDemand,
)
from gridshare.core.dr.compliance import ComplianceRecord, ComplianceTracker, Escalation
from gridshare.core.dr.curtail import (
    ConnectorLoad,
    CurtailPolicy,
    StationLoad,
    connector_caps,
    split_reduction,
)
from gridshare.core.dr.signals import (
    DrPriority,
    DrSignal,
    SignalInvalid,
    SignalType,
    signal_from_json,
)
from gridshare.core.topology import station_kw_to_amps

__all__ = [
    "ComplianceRecord", "ComplianceTracker", "ConnectorLoad", "CurtailPolicy", "DrEvent",
    "DrPriority", "DrSignal", "Escalation", "EventBook", "EventState", "SignalConflict",
    "SignalInvalid", "SignalType", "StationLoad", "Submitted", "ZoneDemand",
    "connector_caps", "signal_from_json", "split_reduction", "station_kw_to_amps",
]
