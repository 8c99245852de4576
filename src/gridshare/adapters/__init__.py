"""Adapters between the outside world and the core."""
