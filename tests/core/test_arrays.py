"""The array form of a snapshot's demand is the same whether it is read afresh or carried
over from the last snapshot on the same topology (only changed connectors read again)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from gridshare.core.arrays import DemandArrays, demand_arrays, topology_arrays
from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import Topology

from .strategies import CORE_SETTINGS, Case, cases, snapshots


def fresh(topology: Topology, snapshot: Snapshot) -> DemandArrays:
    """Read on a copy of the topology, which carries nothing over."""
    copy = replace(topology)
    return demand_arrays(topology_arrays(copy), replace(snapshot, _cache={}))


def assert_same(a: DemandArrays, b: DemandArrays) -> None:
    for name in DemandArrays.__slots__:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@CORE_SETTINGS
@given(case=cases(), data=st.data())
def test_next_snapshot_reads_the_same_as_a_fresh_one(case: Case, data: st.DataObject) -> None:
    """The next snapshot keeps most demand objects of the last, changes, adds and drops a
    few, and moves ``now`` (connectors without an arrival arrive ``now``)."""
    ta = topology_arrays(case.topology)
    demand_arrays(ta, case.snapshot)
    other = data.draw(snapshots(case.topology))
    keys = sorted(set(case.snapshot.connectors) | set(other.connectors))
    take_other = data.draw(st.sets(st.sampled_from(keys))) if keys else set()
    mixed = {}
    for key in keys:
        source = other if key in take_other else case.snapshot
        if key in source.connectors:
            mixed[key] = source.connectors[key]
    nxt = Snapshot(other.now, mixed, other.groups)
    assert_same(demand_arrays(ta, nxt), fresh(case.topology, nxt))


@CORE_SETTINGS
@given(case=cases())
def test_a_changed_dict_is_not_mistaken_for_the_last_one(case: Case) -> None:
    """A caller that builds its next snapshot by changing the same dict in place."""
    ta = topology_arrays(case.topology)
    connectors = dict(case.snapshot.connectors)
    demand_arrays(ta, Snapshot(case.snapshot.now, connectors))
    for key, demand in list(connectors.items())[:3]:
        connectors[key] = replace(demand, active=not demand.active)
    nxt = Snapshot(case.snapshot.now, connectors)
    assert_same(demand_arrays(ta, nxt), fresh(case.topology, nxt))
