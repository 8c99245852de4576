"""Simulated OCPP chargers and EVs for demos, end-to-end tests and benchmarks.

The simulator speaks real OCPP 1.6J / 2.0.1 over websockets, so whatever CSMS it talks to
runs its real code paths. Entry points: :class:`~gridshare.sim.ev.EV`,
:class:`~gridshare.sim.charger.SimCharger`, :class:`~gridshare.sim.site.SimSite` and
``python -m gridshare.sim``; DC fast chargers and their ramping cars are
:class:`~gridshare.sim.dc.DcStation` and :class:`~gridshare.sim.dc.DcEV`.
"""

from gridshare.sim.charger import SimCharger
from gridshare.sim.clock import ManualClock, ScaledClock, SimClock
from gridshare.sim.connector import Status, Transaction
from gridshare.sim.dc import DcConnector, DcEV, DcStation
from gridshare.sim.ev import EV
from gridshare.sim.profiles import ChargingProfile, Period, Purpose
from gridshare.sim.site import ConstantLoad, Scenario, SimSite, SwitchingLoad

__all__ = [
    "EV",
    "ChargingProfile",
    "ConstantLoad",
    "DcConnector",
    "DcEV",
    "DcStation",
    "ManualClock",
    "Period",
    "Purpose",
    "ScaledClock",
    "Scenario",
    "SimCharger",
    "SimClock",
    "SimSite",
    "Status",
    "SwitchingLoad",
    "Transaction",
]
