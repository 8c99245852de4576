"""Cars plugging in and out of a simulated charger, and the transactions and connector
statuses that follow, by the OCPP rules.

Online, a plugged car's id tag is authorized first and energy flows once the CSMS accepts
it; offline (or when the link drops while waiting for the answer), the transaction starts
at once, as chargers with AllowOfflineTxForUnknownId do, and is reported later. A
transaction's end takes its TxProfiles with it. Everything the CSMS must hear goes to the
charger's outbox; this module never touches the link.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol

from gridshare.sim.clock import SimClock
from gridshare.sim.connector import Connector, Status, Transaction
from gridshare.sim.ev import EV
from gridshare.sim.meter import MeterSample
from gridshare.sim.outbox import Outgoing


class ChargerSide(Protocol):
    """What the transaction rules need from their charger."""

    clock: SimClock
    protocol: str
    charging_needs: bool
    id_tag: str

    @property
    def connected(self) -> bool: ...

    def enqueue(self, item: Outgoing) -> None: ...

    def log_event(self, what: str) -> None: ...

    def sample(self, conn: Connector, context: str) -> MeterSample: ...

    def transaction_ended(self, connector: int) -> None:
        """Drop the connector's TxProfiles and recompute what it offers."""
        ...

    def offer_changed(self) -> None:
        """Something that decides the offered current changed: recompute now."""
        ...


class Transactions:
    """The transaction rules for ``connectors`` of one charger."""

    __slots__ = ("charger", "connectors")

    def __init__(self, charger: ChargerSide, connectors: Sequence[Connector]) -> None:
        self.charger = charger
        self.connectors = connectors

    def plug(self, conn: Connector, ev: EV, id_tag: str) -> Transaction:
        conn.ev = ev
        conn.ev_limit_a = 0.0
        conn.pending.clear()
        self.charger.log_event(
            f"plug c{conn.id} soc={ev.soc:.2f} need={ev.energy_needed_kwh:.1f}kWh"
        )
        return self.begin(conn, id_tag)

    def begin(self, conn: Connector, id_tag: str) -> Transaction:
        """A transaction for the car on ``conn``: authorize online, start at once offline."""
        charger = self.charger
        now = charger.clock.now()
        tx = Transaction(conn.id, id_tag, now, uuid.uuid4().hex)
        if charger.protocol != "ocpp1.6":
            tx.id = tx.local_id  # 2.0.1: the station names its transactions
        conn.tx = tx
        self.set_status(conn, Status.PREPARING)
        online = charger.connected
        charger.enqueue(Outgoing("plugged", conn.id, now, tx=tx, offline=not online))
        if online:
            charger.enqueue(Outgoing("authorize", conn.id, now, tx=tx))
        else:
            self.activate(tx, offline=True)
        return tx

    def unplug(self, conn: Connector) -> EV | None:
        ev = conn.ev
        if ev is None:
            return None
        tx = conn.tx
        if tx is not None and not tx.ended:
            self.end(conn, "EVDisconnected")
        conn.ev = None
        conn.tx = None
        conn.pending.clear()
        conn.ev_limit_a = conn.drawn_a = 0.0
        self.charger.log_event(f"unplug c{conn.id} soc={ev.soc:.2f}")
        if conn.status is not Status.FINISHING:
            self.set_status(conn, Status.FINISHING)
        self.set_status(conn, Status.AVAILABLE)
        self.charger.offer_changed()
        return ev

    def authorized(self, tx: Transaction, accepted: bool) -> None:
        """The CSMS's verdict on the id tag (Authorize, or 1.6 StartTransaction.conf)."""
        if accepted:
            if not tx.active:
                self.activate(tx)
            return
        self.charger.log_event(f"authorization rejected c{tx.connector}")
        conn = self.connectors[tx.connector - 1]
        if conn.tx is tx and not tx.ended:
            self.end(conn, "DeAuthorized")

    def remote_stop(self, transaction_id: str) -> bool:
        for conn in self.connectors:
            if conn.tx is not None and conn.tx.id == transaction_id and not conn.tx.ended:
                self.end(conn, "Remote")
                return True
        return False

    def activate(self, tx: Transaction, *, offline: bool = False) -> None:
        """Energy transfer may begin."""
        charger = self.charger
        conn = self.connectors[tx.connector - 1]
        if conn.tx is not tx or tx.ended:
            return
        now = charger.clock.now()
        tx.active = True
        tx.offline_start = offline
        tx.started_at = now
        tx.meter_start_wh = conn.energy_wh
        charger.log_event(f"tx_start c{tx.connector}" + (" (offline)" if offline else ""))
        charger.enqueue(Outgoing("started", tx.connector, now, tx=tx, offline=offline))
        if charger.charging_needs and charger.protocol != "ocpp1.6":
            charger.enqueue(Outgoing("needs", tx.connector, now, tx=tx))
        charger.offer_changed()

    def end(self, conn: Connector, reason: str) -> None:
        """End the transaction on ``conn`` (the car stays plugged: Finishing)."""
        charger = self.charger
        tx = conn.tx
        assert tx is not None
        tx.ended = True
        tx.stop_reason = reason
        # 2.0.1 reported the transaction at plug-in; 1.6 only once it started
        reported = tx.active or charger.protocol != "ocpp1.6"
        tx.active = False
        if reported:
            final = charger.sample(conn, "Transaction.End")
            charger.enqueue(Outgoing("stopped", conn.id, final.timestamp, tx=tx, sample=final))
        elif tx.stopped_event is not None:
            tx.stopped_event.set()
        energy = conn.energy_wh - tx.meter_start_wh
        charger.log_event(f"tx_stop c{conn.id} reason={reason} energy={energy:.0f}Wh")
        self.set_status(conn, Status.FINISHING)
        charger.transaction_ended(conn.id)

    def start_waiting_offline(self, waiting: Sequence[Outgoing]) -> None:
        """The link dropped before these authorizations were answered: start offline."""
        for item in waiting:
            if item.tx is not None:
                self.activate(item.tx, offline=True)

    def ongoing(self) -> bool:
        """Whether any transaction has begun and not ended."""
        return any(c.tx is not None and not c.tx.ended for c in self.connectors)

    def restart_after_reboot(self, stop_reason: str) -> None:
        """Running transactions end (with ``stop_reason``); plugged cars begin new ones."""
        for conn in self.connectors:
            tx = conn.tx
            if tx is not None and not tx.ended:
                self.end(conn, stop_reason)
            if conn.ev is not None:
                self.begin(conn, tx.id_tag if tx is not None else self.charger.id_tag)

    def set_status(self, conn: Connector, status: Status) -> None:
        if conn.status is status:
            return
        conn.status = status
        self.charger.log_event(f"status c{conn.id} {status.value}")
        self.charger.enqueue(
            Outgoing("status", conn.id, self.charger.clock.now(), tx=conn.tx, status=status)
        )
