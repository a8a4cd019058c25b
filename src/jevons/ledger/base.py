"""The event store contract every ledger backend honours, and the in-memory store.

``append`` returns only once the event is durable (for the in-memory store: once it is held).
Appending an idempotency key that is already stored stores nothing and returns ``False``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from jevons.events import Event

__all__ = ["CAPTURE_PREFIX", "EventQuery", "EventStore", "MemoryStore"]

#: how an append-log line of a deferred capture starts (``jevons.capture.record`` writes them;
#: the ledger needs a capture reader to turn one into an event)
CAPTURE_PREFIX = b'["C1",'


@dataclass(frozen=True, slots=True)
class EventQuery:
    customer: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    run_id: str | None = None
    model: str | None = None
    status: str | None = None  # attempt status, or "unpriced"/"estimated"/"priced" for cost status
    limit: int | None = None

    def matches(self, e: Event) -> bool:
        if self.customer is not None and e.customer != self.customer:
            return False
        if self.since is not None and e.timestamp < self.since:
            return False
        if self.until is not None and e.timestamp >= self.until:
            return False
        if self.run_id is not None and e.run_id != self.run_id:
            return False
        if self.model is not None and self.model not in (e.cost.model, e.model_requested):
            return False
        return self.status is None or self.status in (e.status, e.cost.status)


class EventStore(Protocol):
    def append(self, event: Event) -> bool: ...

    def append_many(self, events: Iterable[Event]) -> int: ...

    def query(self, q: EventQuery | None = None) -> list[Event]: ...

    def close(self) -> None: ...


class MemoryStore:
    """Events held in this process only: for tests and ``Meter(ledger="memory")``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._keys: set[str] = set()

    def append(self, event: Event) -> bool:
        with self._lock:
            if event.idempotency_key in self._keys:
                return False
            self._keys.add(event.idempotency_key)
            self._events.append(event)
            return True

    def append_many(self, events: Iterable[Event]) -> int:
        return sum(1 for e in events if self.append(e))

    def query(self, q: EventQuery | None = None) -> list[Event]:
        with self._lock:
            snapshot = list(self._events)
        out = [e for e in snapshot if q is None or q.matches(e)]
        out.sort(key=lambda e: e.timestamp)
        if q is not None and q.limit is not None:
            out = out[: q.limit]
        return out

    def close(self) -> None:
        return None
