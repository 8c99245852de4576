"""OpenEVSE boxes as a second charger driver beside OCPP (docs/openevse.md)."""

from gridshare.adapters.openevse.driver import OpenEvseDriver

__all__ = ["OpenEvseDriver"]
