"""What a Web Services handler answers: status, body, headers, and a detail for the request log."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    detail: str = ""
