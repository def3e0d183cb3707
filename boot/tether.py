"""The phone's side of the USB tether, as a service of the boot sequence and as ``phoneprov tether serve``.

While the phone has no usable certificate, :class:`TetherService` answers the PC on the CDC-ACM gadget port
(``/dev/ttyGS0``) in a thread, next to network sign-in: whichever path brings a certificate first wins, and
the boot sequence goes straight to REGISTER with it. The port is re-opened after a lost link or while the
gadget is not there yet (a cable plugged in later is the normal case), so a lab engineer never restarts the
phone because the PC came second. The key is made here, on the phone; only the CSR and the certificate cross
the cable (hal/tether/device.py).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from agent.clocks import Clock, SystemClock
from agent.phone import StoredIdentity
from agent.stages import AgentError, one_line
from agent.truststore import TrustStore
from boot.store import Identity, StateStore
from hal.errors import HalError
from hal.tether.device import PhoneTether, ServeOutcome, serve
from hal.tether.link import Link, SerialLink

log = logging.getLogger("phoneprov.boot.tether")
SERIAL_SOURCES = ("proc/device-tree/serial-number", "sys/firmware/devicetree/base/serial-number")
REOPEN_S = 5.0  # the gadget port is absent, or the PC went away: look again this often


def read_phone_serial(sysroot: Path = Path("/")) -> str:
    """The serial number the USB gadget reports (usb-gadget.sh's order): device tree, cpuinfo, machine-id."""
    for rel in SERIAL_SOURCES:
        try:
            text = (sysroot / rel).read_bytes().replace(b"\0", b"").decode("ascii", "replace").strip()
        except OSError:
            continue
        if text:
            return text
    try:
        for line in (sysroot / "proc/cpuinfo").read_text("ascii", "replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Serial" and value.strip():
                return value.strip()
    except OSError:
        pass
    try:
        return (sysroot / "etc/machine-id").read_text("ascii", "replace").strip()[:16]
    except OSError:
        return ""


class TetherService:
    """Serve the PC on ``port`` in a thread until a certificate is installed or :meth:`stop` is called.

    ``install`` persists the identity and may refuse it by raising (the PC then hears why): the boot
    sequence refuses when the phone signed in over the network in the meantime.
    """

    def __init__(
        self,
        port: str,
        device_id: str,
        phone_serial: str,
        trust: TrustStore,
        install: Callable[[StoredIdentity], None],
        *,
        clock: Clock | None = None,
        opener: Callable[[str], Link] = SerialLink.open,
        reopen_s: float = REOPEN_S,
    ) -> None:
        self.port, self.device_id, self.phone_serial = port, device_id, phone_serial
        self.trust, self.install, self.opener, self.reopen_s = trust, install, opener, reopen_s
        self.clock = clock or SystemClock()
        self.outcomes: list[ServeOutcome] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Idempotent: a running service keeps its session with the PC."""
        with self._lock:
            if self.running:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="tether", daemon=True)
            self._thread.start()
        log.info("tether: serving %s while the phone has no certificate", self.port)

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self) -> None:
        problem = ""
        while not self._stop.is_set():
            try:
                link = self.opener(self.port)
            except (HalError, OSError) as exc:
                if one_line(exc) != problem:  # say it once, not every few seconds
                    problem = one_line(exc)
                    log.warning("tether: %s; trying again every %g s", problem, self.reopen_s)
                self._stop.wait(self.reopen_s)
                continue
            problem = ""
            try:
                tether = PhoneTether(self.device_id, self.phone_serial, self.trust)
                outcome = serve(link, tether, self.install, self.clock, stop=self._stop)
            finally:
                link.close()
            self.outcomes.append(outcome)
            if outcome.ok:
                log.info("tether: %s (%s)", outcome.detail, outcome.thumbprint)
                return
            if not self._stop.is_set():
                log.info("tether: %s; waiting for the PC again", outcome.detail)
                self._stop.wait(self.reopen_s)


def tether_serve(
    port: str,
    state_dir: Path,
    trust_anchor_files: Sequence[Path],
    *,
    phone_serial: str | None = None,
    sysroot: Path = Path("/"),
    stop: threading.Event | None = None,
    out: TextIO | None = None,
) -> int:
    """``phoneprov tether serve``: answer the PC on ``port`` once, until an identity is installed in
    ``state_dir`` (0), the link is lost (1) or ``stop`` is set. Anchors are the phone's shipped roots."""
    out = out or sys.stdout
    store = StateStore(state_dir)
    try:
        store.tidy()
        trust = TrustStore.from_pem_files(trust_anchor_files)
        tether = PhoneTether(store.device_id(), phone_serial or read_phone_serial(sysroot), trust)
        link = SerialLink.open(port)
    except (HalError, AgentError, OSError) as exc:
        print(f"phoneprov: error: {exc}", file=sys.stderr)
        return 2

    def install(new: StoredIdentity) -> None:
        store.save_identity(Identity(new.key, new.certificate, new.intermediates))

    print(f"tether {port}: waiting for the PC (device {tether.device_id})", file=out, flush=True)
    try:
        outcome = serve(link, tether, install, SystemClock(), stop=stop)
    finally:
        link.close()
    print(f"tether {port}: {outcome.detail}" + (f" ({outcome.thumbprint})" if outcome.ok else ""), file=out)
    return 0 if outcome.ok else 1
