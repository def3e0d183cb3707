"""Two network namespaces joined by a veth pair — a DHCP server's side and a phone's side — created by a test
and always torn down. All traffic stays on the pair (192.0.2.0/24, a documentation range)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SERVER_IP = "192.0.2.1"
PHONE_IP = "192.0.2.50"


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"pp-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


@dataclass
class NetLab:
    workdir: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def srv(self) -> str:
        return f"pp-srv-{self.tag}"

    @property
    def cli(self) -> str:
        return f"pp-cli-{self.tag}"

    @property
    def srv_if(self) -> str:
        return f"pps{self.tag}"

    @property
    def cli_if(self) -> str:
        return f"ppc{self.tag}"

    def up(self) -> NetLab:
        for ns in (self.srv, self.cli):
            _ip("netns", "add", ns)
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(f"nameserver {SERVER_IP}\n")  # never the host's resolv.conf
        _ip("link", "add", self.srv_if, "type", "veth", "peer", "name", self.cli_if)
        _ip("link", "set", self.srv_if, "netns", self.srv)
        _ip("link", "set", self.cli_if, "netns", self.cli)
        _ip("-n", self.srv, "addr", "add", f"{SERVER_IP}/24", "dev", self.srv_if)
        _ip("-n", self.cli, "addr", "add", f"{PHONE_IP}/24", "dev", self.cli_if)
        for ns, dev in ((self.srv, self.srv_if), (self.cli, self.cli_if)):
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        return self

    def start(
        self, ns: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """A long-running process inside ``ns`` (a server); stopped by :meth:`down`."""
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        self.procs.append(proc)
        return proc

    def run(
        self, ns: str, argv: Sequence[str], timeout_s: float = 60, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout_s, input=stdin
        )

    def wait_udp_listener(self, ns: str, port: int, timeout_s: float = 10.0) -> None:
        """Until something in ``ns`` listens on UDP ``port`` (servers take a moment to bind)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = self.run(ns, ["ss", "-lnuH", f"sport = :{port}"], timeout_s=5).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise TimeoutError(f"nothing listens on UDP {port} in {ns} after {timeout_s} s")

    def down(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for ns in (self.srv, self.cli):
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10
            ).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
