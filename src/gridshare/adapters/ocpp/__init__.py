"""OCPP 1.6J / 2.0.1 central system (CSMS) adapter: chargers in, typed events out,
charging profiles back. Built on the ``ocpp`` package and ``websockets``.

>>> from gridshare.adapters.ocpp import CentralSystem, CsmsConfig
"""

from .auth import hash_password, verify_password
from .central import CentralSystem, CsmsStats
from .config import ChargerCredentials, CsmsConfig, TlsConfig

__all__ = [
    "CentralSystem",
    "ChargerCredentials",
    "CsmsConfig",
    "CsmsStats",
    "TlsConfig",
    "hash_password",
    "verify_password",
]
