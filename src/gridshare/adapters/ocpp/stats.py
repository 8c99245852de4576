"""Counts of the central system's calls, for the dashboard and the benchmark report."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class CsmsStats:
    """Calls sent and failed, queued commands replaced, latency of answered calls."""

    calls_sent: int = 0
    calls_failed: int = 0
    coalesced: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=2048))

    def record_latency(self, seconds: float) -> None:
        self.latencies_s.append(seconds)

    def summary(self, connections: int) -> dict[str, float | int]:
        samples = sorted(self.latencies_s)
        mean_ms = 1000 * sum(samples) / len(samples) if samples else 0.0
        p99_ms = 1000 * samples[min(len(samples) - 1, math.ceil(0.99 * len(samples)) - 1)] \
            if samples else 0.0
        return {"connections": connections, "calls_sent": self.calls_sent,
                "calls_failed": self.calls_failed, "coalesced": self.coalesced,
                "latency_mean_ms": mean_ms, "latency_p99_ms": p99_ms}
