"""gridshare: keep EV charging inside the limits of the wires that feed it."""

__version__ = "0.1.0"
