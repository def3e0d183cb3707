"""The boot tests sign in against the same loopback lab pool as the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Lab, start_lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = start_lab(tmp_path)
    try:
        yield lab
    finally:
        lab.node.stop()
