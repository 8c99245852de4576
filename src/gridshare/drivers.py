"""What the controller needs from anything that can set a charger's current.

The OCPP central system implements this; an OpenEVSE driver can later. Units in names.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol


class CommandResult(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    """The charger answered but refused (marked and reported)."""
    TIMEOUT = "timeout"
    """No answer after every retry."""
    OFFLINE = "offline"
    """Not connected: nothing was sent."""


class ChargerDriver(Protocol):
    async def apply_setpoint(self, charger: str, connector: int, current_a: float,
                             lease_s: float) -> CommandResult:
        """Live setpoint in A per phase for the running session, valid for ``lease_s``
        seconds after which the charger falls back to its failsafe current."""
        ...

    async def apply_failsafe(self, charger: str, current_a: float) -> CommandResult:
        """The current the charger falls back to when it cannot hear us (default profile)."""
        ...

    async def apply_charger_cap(self, charger: str, current_a: float | None) -> CommandResult:
        """A site cap on the whole charger (ChargePointMaxProfile); None lifts it."""
        ...
