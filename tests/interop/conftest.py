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
from tests.servers import server_missing

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
        server_missing(f"{binary} is not installed (.ci/install-system-deps installs it)")
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


def run_dhcpcd(lab: NetLab, vendor_class: str, *mode: str) -> dict[str, str]:
    """dhcpcd (an independent DHCP client) in the phone's namespace: ``-T -s ADDR`` for an INFORM, ``-1`` for a
    real lease. Returns the environment its hook saw ({} when no answer ran the hook)."""
    env_file = lab.workdir / "dhcpcd.env"
    env_file.unlink(missing_ok=True)
    hook = lab.workdir / "hook.sh"
    hook.write_text(f"#!/bin/sh\nenv > {env_file}\n")
    hook.chmod(0o755)
    conf = lab.workdir / "dhcpcd.conf"
    conf.write_text(
        f"vendorclassid {vendor_class}\noption vendor_encapsulated_options, sip_server, ntp_servers\n"
        "ipv4only\nnoipv4ll\nnodelay\nnoarp\n"
    )
    lab.run(lab.cli, [need("dhcpcd"), "-f", str(conf), "-c", str(hook), "-4", "-t", "10", *mode, lab.cli_if])
    if not env_file.exists():
        return {}
    return dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
