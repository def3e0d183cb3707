"""Per-node logs an engineer collects from every server of the pool (nobody knows which one the phone hit).

``provisioning.log``: the CertProv/Web Ticket log, one line per request — time, node, user, device, stage,
result, code, request id, detail. ``requests.log``: an IIS-style (W3C extended) request log. Neither ever
contains a PIN, a key or a proof key: only the fields below are written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

W3C_FIELDS = "date time s-ip cs-method cs-uri-stem s-port c-ip cs(User-Agent) sc-status time-taken x-detail"


@dataclass(frozen=True)
class ProvRecord:
    user: str
    device: str
    stage: str
    result: str
    code: str
    request_id: str = "-"
    detail: str = ""


def _clean(text: str) -> str:
    return " ".join(text.split()).replace('"', "'") or "-"


class _LineFile:
    """Appends whole lines under a lock; the file is opened per write so rotation by logrotate just works."""

    def __init__(self, path: Path, header: str | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if header and not path.exists():
            self._append(header)

    def _append(self, line: str) -> None:
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")


class ProvisioningLog(_LineFile):
    def __init__(
        self, path: Path, node: str, now: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        super().__init__(path)
        self.node, self.now = node, now

    def record(self, rec: ProvRecord) -> str:
        stamp = self.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = (
            f"{stamp} node={self.node} user={_clean(rec.user)} device={_clean(rec.device)} stage={rec.stage} "
            f'result={rec.result} code={rec.code or "-"} request={_clean(rec.request_id)} detail="{_clean(rec.detail)}"'
        )
        self._append(line)
        return line


class RequestLog(_LineFile):
    def __init__(self, path: Path, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        super().__init__(path, f"#Software: phoneprov pool\n#Version: 1.0\n#Fields: {W3C_FIELDS}")
        self.now = now

    def record(
        self,
        s_ip: str,
        method: str,
        path: str,
        port: int,
        c_ip: str,
        agent: str,
        status: int,
        ms: int,
        detail: str,
    ) -> None:
        now = self.now()
        agent = _clean(agent).replace(" ", "+")
        self._append(
            f"{now:%Y-%m-%d} {now:%H:%M:%S} {s_ip} {method} {path} {port} {c_ip} {agent} {status} {ms} "
            f'"{_clean(detail)}"'
        )
