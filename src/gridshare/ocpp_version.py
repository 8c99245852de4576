"""The OCPP versions gridshare speaks: one enum for the central system and the simulator.

Its values are the WebSocket subprotocol names, so a negotiated subprotocol *is* a version.
"""

from __future__ import annotations

from enum import StrEnum


class OcppVersion(StrEnum):
    V16 = "ocpp1.6"
    V201 = "ocpp2.0.1"
    V21 = "ocpp2.1"

    @property
    def v2(self) -> bool:
        """2.0.1 or 2.1: the same message model (TransactionEvent, evseId, numbers in
        sampled values), so 2.1 goes down the 2.0.1 code path wherever the messages are
        equal."""
        return self is not OcppVersion.V16


V16 = OcppVersion.V16
V201 = OcppVersion.V201
V21 = OcppVersion.V21
