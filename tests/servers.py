"""Skip, or fail in CI: a test that needs a real server (dnsmasq, Kea, PostgreSQL…) skips on a developer's machine
without it, but in CI — where .ci/install-system-deps has just installed it — a skip would hide a broken setup.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import NoReturn

import pytest

REQUIRE_ENV = "PHONEPROV_REQUIRE_SERVERS"


def server_missing(reason: str) -> NoReturn:
    """Skip with ``reason``; with $PHONEPROV_REQUIRE_SERVERS set (``.ci/run``), fail with it."""
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason} — required in CI (${REQUIRE_ENV})", pytrace=False)
    print(f"SKIP: {reason}", file=sys.stderr)
    pytest.skip(reason)


def binary(name: str, package: str) -> str:
    """The path of ``name`` (also searched in /usr/sbin), or :func:`server_missing` naming its apt package."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        server_missing(f"{name} is not installed (apt: {package}; .ci/install-system-deps installs it)")
    return path
