"""Scale-out on NATS JetStream: the event codec, the JetStream bus, the charger driver
over request/reply, site leases and the exactly-once reading recorder (docs/scale-out.md).
"""
