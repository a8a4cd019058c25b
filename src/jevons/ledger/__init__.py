"""jevons.ledger: the durable event store behind ``Meter`` and the sinks' outbox."""

from __future__ import annotations

from jevons.ledger.base import EventQuery, EventStore, MemoryStore

__all__ = ["EventQuery", "EventStore", "MemoryStore"]
