"""The pure core: topology, allocation, safety guard. No I/O, no clock, no globals."""
