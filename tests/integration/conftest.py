"""Fixtures that start real components and always stop them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from tests.integration.harness import Deployment, kill_leftover_workers


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One embedded broker per test module (it starts in well under a second): a module's
    groups and topics never share a coordinator with leftovers of earlier modules, such as
    the dead members and the in-memory data of the SIGKILL tests."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(free_port(), log_path=log) as running:
        yield running


@pytest.fixture
def deployment(broker: EmbeddedBroker, tmp_path: Path) -> Deployment:
    return Deployment(bootstrap=broker.bootstrap, base_dir=tmp_path)


@pytest.fixture(scope="module", autouse=True)
def no_worker_left_behind() -> Iterator[None]:
    """Every worker process a module's tests started is gone when the module ends, even
    when a test failed before stopping its own (set up first, so torn down last: after
    the module's own fixtures have stopped theirs)."""
    yield
    killed = kill_leftover_workers()
    if killed:
        print(f"killed workers a test left running: {killed}")
