"""A tiny sd_notify(3) client: tell systemd the phone is up, what it is doing, and that it is alive.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) to ``Type=notify``
services and ``WATCHDOG_USEC`` (+ ``WATCHDOG_PID``) when ``WatchdogSec=`` is set. Outside systemd every call
is a no-op, so the same code runs in a terminal, in tests and under the unit. Sending never raises: a
status line lost because systemd went away must not take the phone down.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

_STATUS_MAX = 1024  # systemd shows one short line; longer text is cut, never split into assignments


class Notifier:
    """Datagrams to systemd's notification socket; ``address`` None means not under systemd."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = _socket_address(address) if address else None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """From ``NOTIFY_SOCKET``/``WATCHDOG_USEC``; the watchdog counts only if ``WATCHDOG_PID`` is us."""
        env = os.environ if environ is None else environ
        usec: int | None = None
        pid = env.get("WATCHDOG_PID", "")
        if (not pid or pid == str(os.getpid())) and env.get("WATCHDOG_USEC", "").isdigit():
            usec = int(env["WATCHDOG_USEC"])
        return cls(env.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str | None = None) -> bool:
        """Startup is done (``Type=notify`` leaves "activating")."""
        return self.notify("READY=1", *(() if status is None else (_status(status),)))

    def status(self, text: str) -> bool:
        """One line shown by ``systemctl status phoneprov``."""
        return self.notify(_status(text))

    def watchdog(self) -> bool:
        """Still alive: send at least every :meth:`watchdog_interval_s` or systemd restarts the service."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start (or stop) timeout fires, e.g. during a slow sign-in."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog_interval_s(self) -> float | None:
        """How often to call :meth:`watchdog`: half of ``WatchdogSec=`` as sd_watchdog_enabled(3) advises;
        None when the watchdog is off."""
        return self.watchdog_usec / 2_000_000 if self.watchdog_usec else None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False when not under systemd or the send failed."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self.address)
        except OSError:
            self.close()
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _socket_address(address: str) -> str:
    """``@name`` is Linux's abstract namespace: a leading NUL byte instead of a file."""
    return "\0" + address[1:] if address.startswith("@") else address


def _status(text: str) -> str:
    """``STATUS=`` with the text on one line: a newline would start a new assignment (READY=1 …)."""
    flat = " ".join(text.split())
    return "STATUS=" + (flat if len(flat) <= _STATUS_MAX else flat[: _STATUS_MAX - 1] + "…")
