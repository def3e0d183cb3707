"""Per-node logs an engineer collects from every server of the pool (nobody knows which one the phone hit).

``provisioning.log``: the CertProv/Web Ticket log, one line per request — time, node, user, device, stage,
result, code, request id, detail. ``requests.log``: an IIS-style (W3C extended) request log. Neither ever
contains a PIN, a key or a proof key: only the fields below are written.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

_SAFE = "/.:@{}_-~,;()"
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


def _token(text: str) -> str:
    """A value that cannot break the line's fields: client-supplied text is percent-encoded, never trusted."""
    return quote(text, safe=_SAFE) or "-"


def _quoted(text: str) -> str:
    """Free text in double quotes with JSON escapes: no newline or quote in it can forge a line or a field."""
    return json.dumps(" ".join(text.split()), ensure_ascii=True)


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
            f"{stamp} node={_token(self.node)} user={_token(rec.user)} device={_token(rec.device)} "
            f"stage={_token(rec.stage)} result={_token(rec.result)} code={_token(rec.code)} "
            f"request={_token(rec.request_id)} detail={_quoted(rec.detail)}"
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
        agent = (
            quote(" ".join(agent.split()), safe=_SAFE + " ").replace(" ", "+") or "-"
        )  # IIS writes + for space
        self._append(
            f"{now:%Y-%m-%d} {now:%H:%M:%S} {_token(s_ip)} {_token(method)} {_token(path)} {port} {_token(c_ip)} "
            f"{agent} {status} {ms} {_quoted(detail)}"
        )
