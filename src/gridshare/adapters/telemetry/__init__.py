"""MQTT telemetry ingest: AMI meters and non-OCPP stations (docs/telemetry.md)."""
