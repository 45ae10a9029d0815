"""What the collector tests share: a collector on loopback with its SQLite file in the test's folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cutwatch.collector import CollectorServer


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorServer]:
    server = CollectorServer(tmp_path / "cuts.db", listen="127.0.0.1:0", snapshot_timeout=10.0).start()
    try:
        yield server
    finally:
        server.stop()
