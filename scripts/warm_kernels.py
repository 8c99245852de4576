"""Compile the allocator's numba kernels into their on-disk cache once, at setup.

numba compiles a kernel the first time it is called (1.5–15 s, depending on the load),
then loads it from ``__pycache__`` in ~0.2 s. Calling every policy once on a small site
of the benchmark's kind (1- and 3-phase chargers, kW limits, priorities, deadlines,
offline chargers) here means neither the first ``gridshare allocate`` of a new install
nor the first test that allocates pays for compiling.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from dataclasses import replace

from bench_allocation import POLICIES, build_site, draw_snapshot

from gridshare.core.allocation import allocate
from gridshare.core.snapshot import GroupConditions, GroupLimit, LimitSource


def main() -> None:
    rng = random.Random(1)
    topology = build_site(300, rng)
    for run in range(3):
        snapshot = draw_snapshot(topology, rng, run)
        # and once with the minimums contending (a deep cut), so admission compiles too
        cut = GroupConditions(limits=(GroupLimit(LimitSource.DEMAND_RESPONSE, 400.0),))
        squeezed = replace(snapshot, groups={**snapshot.groups,
                                             **dict.fromkeys(topology.roots, cut)})
        for policy in POLICIES:
            allocate(topology, snapshot, policy=policy)
            allocate(topology, squeezed, policy=policy)


if __name__ == "__main__":
    main()
