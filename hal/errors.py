"""The HAL's one exception family: which device, what went wrong, and what to do about it."""

from __future__ import annotations


class HalError(Exception):
    """A hardware (or emulated hardware) operation failed. ``device`` names the board/port/NIC."""

    def __init__(self, device: str, code: str, detail: str, remedy: str = "") -> None:
        super().__init__(f"{device}: {detail}")
        self.device, self.code, self.detail, self.remedy = device, code, detail, remedy


class FrameError(HalError):
    """Malformed bytes from a device (a bad reply, a corrupt frame): one line saying what was wrong."""

    def __init__(self, device: str, detail: str) -> None:
        super().__init__(device, "MALFORMED", detail)
