"""Meter telemetry: windowed demand per feeder, substation and region (pure)."""
