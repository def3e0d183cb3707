"""``phoneprov rig serve``: the rig's HTTP side, so a phone can ask for the field's remedy itself.

A phone whose retries are used up on a failure a fresh boot fixes (``[retry] rig_power_cycle_url`` in its
agent.toml, e.g. CERT_PUBLISH 3005) POSTs ``/phones/<name>/cycle``. The answer (202) goes out *before* the
relay opens — the phone is about to lose power — and the cycle runs in the background, one at a time per
phone, at most once per ``cooldown_s`` so a phone stuck in a loop cannot flap its relay. ``GET /phones`` is
``rig status --json``. There is no authentication: bind it to the lab network only (it can do nothing but
power-cycle the phones its rig file names).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tools.rig import RigPhone, power_cycle, status

log = logging.getLogger("phoneprov.rig")
_CYCLE = re.compile(r"^/phones/([A-Za-z0-9._-]{1,64})/cycle$")
COOLDOWN_S = 120.0


class RigService:
    """Which phone may be cycled now; runs each cycle in its own thread."""

    def __init__(
        self,
        rig: dict[str, RigPhone],
        cooldown_s: float = COOLDOWN_S,
        cycle: Callable[[dict[str, RigPhone], str], dict[str, Any]] = power_cycle,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rig, self.cooldown_s, self._cycle, self._monotonic = rig, cooldown_s, cycle, monotonic
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self.results: dict[str, dict[str, Any]] = {}  # the last cycle of each phone, for GET /phones

    def request_cycle(self, name: str) -> tuple[int, str]:
        """(HTTP status, one line): 202 started, 404 unknown phone, 429 cycled too recently."""
        if name not in self.rig:
            return 404, f"no phone {name!r} in the rig"
        with self._lock:
            now = self._monotonic()
            last = self._last.get(name)
            if last is not None and now - last < self.cooldown_s:
                return (
                    429,
                    f"{name} was power-cycled {now - last:.0f} s ago; at most once per {self.cooldown_s:g} s",
                )
            self._last[name] = now
        threading.Thread(target=self._run, args=(name,), name=f"cycle-{name}", daemon=True).start()
        return 202, f"power-cycling {name}"

    def _run(self, name: str) -> None:
        time.sleep(0.2)  # let the 202 reach the phone before its power goes
        result = self._cycle(self.rig, name)
        self.results[name] = result
        log.warning("power-cycled %s on request: %s", name, result.get("error") or result.get("power"))


def serve(service: RigService, bind: tuple[str, int]) -> ThreadingHTTPServer:
    """A started server (call ``shutdown()`` then ``server_close()`` to stop it)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            match = _CYCLE.match(self.path)
            code, text = (
                service.request_cycle(match.group(1)) if match else (404, "POST /phones/<name>/cycle")
            )
            self._send(code, {"result": text})

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/phones":
                self._send(404, {"result": "GET /phones"})
                return
            rows = status(service.rig, [])
            for row in rows:
                row["last_cycle"] = service.results.get(row["phone"])
            self._send(200, rows)

        def _send(self, code: int, doc: object) -> None:
            body = (json.dumps(doc, indent=2) + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), fmt % args)

    server = ThreadingHTTPServer(bind, Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="rig-serve", daemon=True).start()
    return server
