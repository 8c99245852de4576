"""Meter sources: MQTT topics and polled HTTP endpoints turned into ``MeterSample`` events.

``MeterSources`` is the one object the app builds from the site file's ``meters:`` and
``mqtt:``; payload decoding (units, phase splits, rejections) lives in ``parse``.
"""

from gridshare.adapters.meters.sources import MeterSources, MeterStatus

__all__ = ["MeterSources", "MeterStatus"]
