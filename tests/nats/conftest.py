"""Fixtures for the NATS JetStream tests: a real ``nats-server -js`` per test (see
``tests/natsserver.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from natsserver import NatsServer, nats_server


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A JetStream server on a free 127.0.0.1 port with its store under tmp_path, killed
    after the test."""
    with nats_server(tmp_path / "nats") as started:
        yield started
