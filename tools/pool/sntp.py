"""The pool's SNTP responder (UDP 123 in the field, any port in the lab), optionally off by a set offset
so a lab can show what a wrong time source does to certificate checks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from agent.stages import WireError
from agent.wire import sntp


def sntp_handler(
    now: Callable[[], datetime], offset_s: Callable[[], float]
) -> Callable[[bytes, tuple[str, int]], tuple[bytes, tuple[str, int]] | None]:
    def handle(data: bytes, source: tuple[str, int]) -> tuple[bytes, tuple[str, int]] | None:
        received = now().timestamp() + offset_s()
        try:
            reply = sntp.build_reply(data, received, now().timestamp() + offset_s())
        except WireError:
            return None
        return reply, source

    return handle
