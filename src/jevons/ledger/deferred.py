"""A ledger database that was down when the process started.

Why: ``Meter()`` runs at an application's start. If the PostgreSQL server (or the SQLite file's
disk) is unavailable at that moment, the application must still start and its calls must still
be metered without losing any (issue 4: the default loses nothing). Falling back to an
in-memory store, as before, kept the events only until the process exited. Instead the store
starts on its append log alone (``JournaledStore``), as it already does through an outage of
the database later on: every event is on disk before the call returns, and committed once the
database answers.

``DeferredLedger`` stands in for the database until then. Each use tries to open it again (at
most once every ``retry_s``); until that succeeds it raises ``LedgerError``, which the store's
drain treats as an outage (retry with backoff, events kept in the log) and which a query
reports to its caller. Once open, every attribute is the real ``SQLLedger``'s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jevons.ledger.database import LedgerError

if TYPE_CHECKING:
    from jevons.ledger.database import SQLLedger

__all__ = ["DeferredLedger"]


class DeferredLedger:
    """The ledger ``open_`` opens, opened on first use that finds the database up."""

    def __init__(self, open_: Callable[[], SQLLedger], identity: str, error: str,
                 *, retry_s: float = 1.0) -> None:
        self._open = open_
        self._identity = identity
        self._error = error
        self._retry_s = retry_s
        self._next_try = time.monotonic() + retry_s
        self._ledger: SQLLedger | None = None
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        """The database's name (as ``SQLLedger.identity``): the append log is kept by it."""
        return self._identity

    @property
    def is_open(self) -> bool:
        return self._ledger is not None

    def opened(self) -> SQLLedger:
        """The real ledger; ``LedgerError`` while the database cannot be opened."""
        ledger = self._ledger
        if ledger is not None:
            return ledger
        with self._lock:
            if self._ledger is None:
                now = time.monotonic()
                if now < self._next_try:
                    raise LedgerError(f"the ledger is not open yet: {self._error}")
                self._next_try = now + self._retry_s
                try:
                    self._ledger = self._open()
                except LedgerError as exc:
                    self._error = str(exc)
                    raise
            return self._ledger

    def __getattr__(self, name: str) -> Any:
        return getattr(self.opened(), name)

    def close(self) -> None:
        with self._lock:
            if self._ledger is not None:
                self._ledger.close()
