"""The OCPP versions gridshare speaks: one enum for the central system and the simulator.

Its values are the WebSocket subprotocol names, so a negotiated subprotocol *is* a version.
"""

from __future__ import annotations

from enum import StrEnum


class OcppVersion(StrEnum):
    V16 = "ocpp1.6"
    V201 = "ocpp2.0.1"


V16 = OcppVersion.V16
V201 = OcppVersion.V201
