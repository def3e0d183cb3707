"""A small threaded UDP responder: one socket, one loop, a sans-IO handler deciding what to answer.

Malformed datagrams are counted and logged in one line; nothing a client sends can stop the loop.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

Answer = tuple[bytes, tuple[str, int]] | None
log = logging.getLogger("phoneprov.pool.udp")


class UdpResponder:
    def __init__(
        self,
        name: str,
        bind: tuple[str, int],
        handle: Callable[[bytes, tuple[str, int]], Answer],
        device: str | None = None,
    ):
        self.name, self.handle = name, handle
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # No SO_REUSEADDR: on UDP it lets two sockets share a port — a second DHCP server on 67 would go
        # unnoticed, and port 0 could hand two lab nodes the same port (seen: a phone's SNTP request reaching
        # another node's DHCP responder). A taken port is an error that names it.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if device:  # a real lab NIC: hear broadcasts there only, answer out of it
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode() + b"\0")
        self.sock.bind(bind)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"pool-{name}", daemon=True)
        self.answered = 0
        self.ignored = 0

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self) -> UdpResponder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            self._serve(data, (str(addr[0]), int(addr[1])))

    def _serve(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            answer = self.handle(data, addr)
        except Exception as exc:  # a handler bug must not stop the responder
            log.warning("%s: dropped datagram from %s:%d: %s", self.name, addr[0], addr[1], exc)
            self.ignored += 1
            return
        if answer is None:
            self.ignored += 1
            return
        try:
            self.sock.sendto(answer[0], answer[1])
            self.answered += 1
        except OSError as exc:
            log.warning("%s: cannot answer %s:%d: %s", self.name, answer[1][0], answer[1][1], exc)
