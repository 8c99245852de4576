"""Test-wide settings.

Under CI (``CI`` set, as the CI runner does), hypothesis runs derandomised: the same
examples every run, so a landing is never decided by the luck of a draw. Developers'
runs keep exploring new examples; whatever they find is added as an explicit case.

``scripts/test --deep`` selects the ``deep`` profile (``GRIDSHARE_HYPOTHESIS_PROFILE=deep``)
and runs the core's properties under many explicit seeds with a budget multiplied by
``GRIDSHARE_EXAMPLES_FACTOR``: the suite must pass on any seed, not only on CI's.
"""

from __future__ import annotations

import os

from hypothesis import Phase, settings

_FACTOR = int(os.environ.get("GRIDSHARE_EXAMPLES_FACTOR", "1"))

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile(
    "deep", derandomize=False, database=None, print_blob=True, max_examples=100 * _FACTOR,
    # Explaining a failure traces every line of a shrunk example: minutes on these sites.
    phases=(Phase.explicit, Phase.generate, Phase.target, Phase.shrink))
_PROFILE = os.environ.get("GRIDSHARE_HYPOTHESIS_PROFILE")
if _PROFILE:
    settings.load_profile(_PROFILE)
elif os.environ.get("CI"):
    settings.load_profile("ci")
