"""Test-wide settings.

Under CI (``CI`` set, as the CI runner does), hypothesis runs derandomised: the same
examples every run, so a landing is never decided by the luck of a draw. Developers'
runs keep exploring new examples; whatever they find is added as an explicit case.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
