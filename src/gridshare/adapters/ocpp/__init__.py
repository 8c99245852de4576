"""OCPP 1.6J / 2.0.1 central system (CSMS) adapter: chargers in, typed events out,
charging profiles back. Built on ``websockets`` and our own small RPC layer; the ``ocpp``
package supplies the official JSON schemas and the action enums.

One job per module: central (the CSMS and ChargerDriver), server (handshake: auth, charger
id, version), session (one charger's connection), rpc (routing, correlation, writing),
handlers (answers to the charger's calls), frames (OCPP-J framing), schemas (the one schema
loader), profiles (charging-profile builders), meter (MeterValues), auth (passwords, TLS,
charger id), config, stats; the OCPP version enum is gridshare.ocpp_version.

>>> from gridshare.adapters.ocpp import CentralSystem, CsmsConfig
"""

from gridshare.ocpp_version import OcppVersion

from .auth import hash_password, verify_password
from .central import CentralSystem, CsmsStats
from .config import ChargerCredentials, CsmsConfig, TlsConfig

__all__ = [
    "CentralSystem",
    "ChargerCredentials",
    "CsmsConfig",
    "CsmsStats",
    "OcppVersion",
    "TlsConfig",
    "hash_password",
    "verify_password",
]
