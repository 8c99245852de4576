"""The allocation engine: a demand snapshot in, one setpoint per connector out.

Every limit is a linear constraint on per-phase connector currents (:mod:`.constraints`);
offline connectors are fixed loads at their failsafe current. Solving happens in three
steps: :mod:`.admission` (who charges at all, rotating pauses without flapping),
:mod:`.policies` (how the room is shared), :mod:`.rounding` (onto the setpoint grid without
losing room); :mod:`.engine` runs them over the tree, once per policy subtree, and
:mod:`.transition` orders the commands that get there. :mod:`.inputs` derives each
connector's bounds and urgency from the snapshot.

Everything runs on arrays (see :mod:`gridshare.core.arrays`) so that 10,000 connectors
take milliseconds; the greedy loops that cannot be vectorised are compiled with numba
(:mod:`.kernels`); arrays that depend only on the topology are built once and cached on
it. The answer is the policy's, unguarded: the caller runs the safety guard
(:func:`gridshare.core.guard.enforce`) on it once per cycle.
"""

from gridshare.core.allocation.constraints import group_loads
from gridshare.core.allocation.engine import allocate
from gridshare.core.allocation.transition import plan_transition

__all__ = ["allocate", "group_loads", "plan_transition"]
