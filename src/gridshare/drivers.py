"""What the controller needs from anything that can set a charger's current.

The OCPP central system implements this; an OpenEVSE driver can later. Units in names.

Every command ends in a :class:`CommandOutcome` that says not only whether the charger
accepted, but whether it *may* have applied the command: a CALL whose answer never came
(timed out, link dropped or half-open mid-call) has an unknown outcome, and the controller
counts it at the larger of the old and new value until the command's own ``valid_to``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class CommandResult(StrEnum):
    ACCEPTED = "accepted"
    """The charger answered and applied it."""
    REJECTED = "rejected"
    """The charger answered and refused (or answered with a CallError): whatever it held
    before stays in force."""
    TIMEOUT = "timeout"
    """Sent, no answer after every retry: the outcome is unknown."""
    LOST = "lost"
    """Sent, and the link dropped before the answer: the outcome is unknown."""
    OFFLINE = "offline"
    """Not connected: nothing was sent."""
    SUPERSEDED = "superseded"
    """Replaced by a newer command for the same target before it was ever sent."""


UNKNOWN_RESULTS = frozenset({CommandResult.TIMEOUT, CommandResult.LOST})
"""Results after which the charger may or may not have applied the command."""


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    result: CommandResult
    sent: bool = True
    """False only when no frame of this command ever left (certainly not applied)."""
    valid_to: datetime | None = None
    """The validTo of the profile as last sent (the charger drops it after that); None
    when nothing was sent or the profile has no end."""
    answer_seq: int | None = None
    """The charger's inbound-frame sequence number of the answer (per charger, increasing
    across connections), so a boot is ordered after every answer that arrived before it."""
    detail: str = ""

    @property
    def unknown(self) -> bool:
        """True when the charger may or may not have applied the command."""
        return self.sent and self.result in UNKNOWN_RESULTS


@dataclass(frozen=True, slots=True)
class SetpointRequest:
    charger: str
    connector: int
    current_a: float
    """A per phase; 0 pauses the connector."""
    lease_s: float
    """The profile's validity: after it the charger falls back to its failsafe current."""


class ChargerDriver(Protocol):
    def submit_setpoints(self, requests: Sequence[SetpointRequest],
                         ) -> list[Awaitable[CommandOutcome]]:
        """Queue every request at once, without waiting for any (the frames of chargers
        with no call in flight are written before this returns or on the next loop pass);
        the i-th awaitable resolves with the i-th request's outcome."""
        ...

    async def apply_setpoint(self, charger: str, connector: int, current_a: float,
                             lease_s: float) -> CommandOutcome:
        """One live setpoint in A per phase for the running session, valid for ``lease_s``
        seconds after which the charger falls back to its failsafe current."""
        ...

    async def apply_failsafe(self, charger: str, current_a: float) -> CommandOutcome:
        """The current the charger falls back to when it cannot hear us (default profile)."""
        ...

    async def apply_charger_cap(self, charger: str, current_a: float | None,
                                ) -> CommandOutcome:
        """A site cap on the whole charger (ChargePointMaxProfile); None lifts it."""
        ...
