"""What the phone is doing, for people and for the rig: one thread-safe snapshot, served as JSON on localhost.

The rig (``phoneprov rig cycle``) and ``phoneprov status`` read ``GET /status``. A stdlib HTTP server is enough
here: one read-only document on 127.0.0.1, and no extra dependency on the phone image.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509

from agent.diagnosis import Diagnosis
from agent.stages import StageResult


def _iso(dt: datetime, timespec: str = "seconds") -> str:
    return dt.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


class BootStatus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._doc: dict[str, Any] = {
            "state": "starting",
            "stage": None,
            "stages": [],
            "certificate": None,
            "registered": None,
            "last_error": None,
            "attempt": 0,
            "next_attempt_at": None,
            # ms: the rig tells a new boot from the old one by this, and a power-cycle can take under 1 s
            "boot_started_at": _iso(datetime.now(UTC), "milliseconds"),
        }

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._doc.update(fields)

    def stage(self, result: StageResult) -> None:
        with self._lock:
            self._doc["stage"] = result.stage.value
            self._doc["stages"] = [*self._doc["stages"], result.as_dict()][-16:]

    def new_attempt(self, attempt: int) -> None:
        self.update(attempt=attempt, stages=[], state="signing-in", next_attempt_at=None)

    def identity(self, cert: x509.Certificate | None) -> None:
        self.update(
            certificate=None
            if cert is None
            else {
                "subject": cert.subject.rfc4514_string(),
                "serial": f"{cert.serial_number:x}",
                "not_after": _iso(cert.not_valid_after_utc),
            }
        )

    def error(self, diagnosis: Diagnosis | None) -> None:
        self.update(last_error=diagnosis.as_dict() if diagnosis else None)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            copy: dict[str, Any] = json.loads(json.dumps(self._doc))  # deep, JSON-safe, unshared
        return copy

    @property
    def headline(self) -> str:
        """One line for systemd's STATUS=."""
        doc = self.snapshot()
        err = doc["last_error"]
        tail = f"; last error {err['stage']} {err['code']}" if err else ""
        return f"{doc['state']} (stage {doc['stage'] or '-'}, attempt {doc['attempt']}){tail}"


class StatusServer:
    """``GET /status`` → the snapshot as JSON; anything else 404. Bound to loopback by default."""

    def __init__(self, status: BootStatus, bind: tuple[str, int]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/status":
                    self.send_error(404)
                    return
                body = json.dumps(status.snapshot(), indent=2).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # the phone's own log says what matters; no per-request noise

        self.server = ThreadingHTTPServer(bind, Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="status", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> StatusServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
