"""Issued web tickets: AssertionID → user, proof key, expiry (protocol.md §6.4: kept by the server, not signed).

Held in the node's memory, bounded in size, expired entries purged on the way. A proof key never appears
in a repr or a log line.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class TicketRecord:
    assertion_id: str
    sip_uri: str
    proof_key: bytes = field(repr=False)
    not_before: datetime
    expires: datetime


class TicketCache:
    def __init__(self, max_entries: int = 100_000) -> None:
        self._items: OrderedDict[str, TicketRecord] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def put(self, record: TicketRecord) -> None:
        with self._lock:
            self._items[record.assertion_id] = record
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def get(self, assertion_id: str, at: datetime) -> TicketRecord | None:
        """The live ticket, or None if unknown or expired (expired ones are dropped)."""
        with self._lock:
            record = self._items.get(assertion_id)
            if record is not None and record.expires <= at:
                del self._items[assertion_id]
                return None
            return record

    def __len__(self) -> int:
        return len(self._items)
