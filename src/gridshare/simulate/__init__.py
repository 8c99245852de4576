"""``gridshare simulate``: a site and its load, run faster than real time on a virtual
clock through the real central system and controller, with plots and a report.

:mod:`~gridshare.simulate.scenario` reads scenario files, :mod:`~gridshare.simulate.vloop`
is the virtual-time event loop, :mod:`~gridshare.simulate.runner` runs one policy and
measures it, :mod:`~gridshare.simulate.report` writes the report folder.
"""
