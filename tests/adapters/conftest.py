"""Fixtures for adapter tests: real Mosquitto brokers (see ``tests/brokers.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import Mosquitto, mosquitto

BROKER_USERS = {"gs": "s3cret-meter-pw"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """An anonymous broker on a free 127.0.0.1 port, killed after the test."""
    with mosquitto(tmp_path / "mosquitto") as started:
        yield started


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that admits only ``BROKER_USERS`` (username and password)."""
    with mosquitto(tmp_path / "mosquitto-auth", users=BROKER_USERS) as started:
        yield started


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """An anonymous broker that speaks only TLS; its CA is ``tls_broker.ca_path``."""
    with mosquitto(tmp_path / "mosquitto-tls", tls=True) as started:
        yield started
