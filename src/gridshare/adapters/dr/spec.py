"""The site file's ``demand_response: {openadr: ...}``: how the OpenADR 2.0b VEN registers
and how it turns a VTN's events into DR signals. Only pydantic here (no openleadr), so the
site file can be checked without loading the VEN's libraries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Kw = Annotated[float, Field(ge=0, allow_inf_nan=False)]
DrPriorityNumber = Literal[1, 2, 3]


class OpenAdrSpec(BaseModel):
    """An OpenADR 2.0b VEN (docs/dr.md, "OpenADR")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vtn_url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    """The VTN's base URL, e.g. ``https://vtn.example.com/OpenADR2/Simple/2.0b``."""
    ven_name: Annotated[str, Field(min_length=1, max_length=200)]
    ven_id: str | None = None
    """As issued by the utility; none: the VTN assigns one when the VEN registers."""
    zone: str | None = None
    """The zone of an event whose targets name no zone of ``targets``."""
    targets: dict[str, str] = {}
    """An event target (its ``resource_id``, ``group_id``, ``party_id`` or ``ven_id``) ->
    the zone it means. An event whose targets map to several zones applies to each."""
    levels: dict[int, Kw] = {}
    """SIMPLE signal level (1 moderate, 2 high, 3 special) -> kW the zone sheds; also for
    LOAD_CONTROL ``x-loadControlLevelOffset``. Level 0 (normal) asks nothing."""
    signal_type: Literal["CURTAIL", "SHED"] = "CURTAIL"
    """How the zone meets an OpenADR event: dimmed stations, or whole stations paused."""
    priority: DrPriorityNumber = 2
    """The DR priority of an event (1 emergency, 2 economic, 3 optional) ..."""
    priorities: dict[int, DrPriorityNumber] = {}
    """... unless its OpenADR priority (the event descriptor's, 1 highest, 0 unset) is
    mapped here, e.g. ``{1: 1}``: an OpenADR priority-1 event is an emergency."""
    opt_out: list[DrPriorityNumber] = []
    """DR priorities the VEN opts out of (and does not apply), e.g. ``[3]``: optional
    events are declined."""
    report_every: Annotated[float, Field(ge=1, le=3600)] = 10.0
    """Seconds between samples of the zones' draw in the TELEMETRY_USAGE report, at least."""
    cert: Path | None = None
    """PEM certificate and ``key`` for TLS client authentication and message signing."""
    key: Path | None = None
    passphrase_file: Path | None = None
    ca_file: Path | None = None
    """CA to check an ``https://`` VTN with."""
    vtn_fingerprint: str | None = None
    """Checks the signature of every message from the VTN when given."""

    def zones_named(self) -> list[tuple[tuple[str, ...], str]]:
        """Every zone id this names, with its path under ``openadr`` (for the site file's
        unknown-zone check)."""
        out: list[tuple[tuple[str, ...], str]] = []
        if self.zone is not None:
            out.append((("zone",), self.zone))
        out += [(("targets", target), zone) for target, zone in self.targets.items()]
        return out
