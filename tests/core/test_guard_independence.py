"""The guard is a second opinion only while it shares nothing with the allocator: read its
imports from its source, and check it neither builds nor reads the allocator's caches."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

from gridshare.core import guard
from gridshare.core.decision import Allocation, RotationState
from gridshare.core.snapshot import ConnectorDemand, Snapshot
from gridshare.core.topology import Charger, Connector, Group, Phase, Policy, Topology

GUARD_SOURCE = Path(guard.__file__)

ALLOWED_FIRST_PARTY = {
    "gridshare.core.decision",  # the types it returns (Alarm, Allocation, GroupLoad)
    "gridshare.core.limits",  # the definition of a limit
    "gridshare.core.snapshot",
    "gridshare.core.topology",
}


def imported_modules(source: str) -> set[str]:
    """Every module the source imports, ``from a import b`` counted as ``a`` and ``a.b``
    (b may be a submodule)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_imported_modules_sees_every_form_of_import() -> None:
    source = ("import gridshare.core.arrays\nfrom gridshare.core import allocation\n"
              "from .arrays import topology_arrays\n")
    assert {"gridshare.core.arrays", "gridshare.core.allocation", ".arrays"} <= \
        imported_modules(source)


def test_guard_imports_nothing_from_the_allocator_or_its_arrays() -> None:
    modules = imported_modules(GUARD_SOURCE.read_text())
    forbidden = {m for m in modules
                 if m.startswith(("gridshare.core.allocation", "gridshare.core.arrays", "."))}
    assert forbidden == set()
    first_party = {m for m in modules if m.startswith("gridshare")}
    # ``from gridshare.core.topology import Phase`` also yields "...topology.Phase".
    assert {m for m in first_party if not m.startswith(tuple(ALLOWED_FIRST_PARTY))} == set()
    assert "numpy" not in {m.split(".")[0] for m in modules}


def test_guard_builds_only_its_own_view_of_the_topology() -> None:
    """No array form of the allocator is built or read: after every guard entry point the
    topology holds only the guard's own view, the snapshot nothing."""
    chargers = {cid: Charger(cid, 1, Phase.L1, 32, 6, 6, 0, (Connector(cid, 1, 32, 6),),
                             group="main") for cid in ("a", "b")}
    topology = Topology(site="t", voltage=230, policy=Policy.EQUAL,
                        groups={"main": Group("main", 32, None, 3, Policy.EQUAL, None,
                                              chargers=("a", "b"))},
                        chargers=chargers, roots=("main",))
    snapshot = Snapshot(datetime(2025, 3, 3, tzinfo=UTC),
                        {("a", 1): ConnectorDemand("a", 1, active=True),
                         ("b", 1): ConnectorDemand("b", 1, active=True)})
    unsafe = Allocation({("a", 1): 20.0, ("b", 1): 20.0}, frozenset(), {}, RotationState())
    assert guard.enforce(topology, snapshot, unsafe).guarded
    guard.check_plan(topology, snapshot, {("a", 1): 6.0, ("b", 1): 6.0}, {("a", 1): 20.0})
    guard.group_loads(topology, snapshot, unsafe.setpoints)
    assert set(topology._cache) == {"guard.site"}
    assert snapshot._cache == {}
