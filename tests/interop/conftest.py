"""Fixtures for interop tests: a fresh pair of namespaces per test, skipped (with the reason printed) only
where this machine cannot create namespaces or lacks the server under test."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.netns import NetLab, unavailable

_WHY_NOT = unavailable()


@pytest.fixture
def netlab(tmp_path: Path) -> Iterator[NetLab]:
    if _WHY_NOT:
        print(f"SKIP interop: {_WHY_NOT}", file=sys.stderr)
        pytest.skip(_WHY_NOT)
    lab = NetLab(tmp_path).up()
    try:
        yield lab
    finally:
        lab.down()


def need(binary: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if path is None:
        reason = f"{binary} is not installed (.ci/install-system-deps installs it)"
        print(f"SKIP interop: {reason}", file=sys.stderr)
        pytest.skip(reason)
    return path


def discover(lab: NetLab, *extra: str) -> tuple[int, dict[str, object]]:
    """`phoneprov discover` run inside the phone's namespace: its exit code and JSON document."""
    done = lab.run(
        lab.cli,
        [
            sys.executable,
            "-m",
            "tools.cli",
            "discover",
            "--interface",
            lab.cli_if,
            "--json",
            "--tries",
            "2",
            "--interval",
            "1",
            *extra,
        ],
    )
    doc: dict[str, object] = json.loads(done.stdout)
    return done.returncode, doc
