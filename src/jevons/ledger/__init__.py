"""jevons.ledger: the durable event store behind ``Meter`` and the sinks' outbox.

- ``open_store(settings)``: the store ``Meter`` appends to on every call (an append log drained
  into the database; ``append`` returns once the event survives the death of the process).
- ``open_ledger(settings)``: the database itself (``SQLLedger``), for queries, re-pricing and
  the outbox; ``open_recovered_ledger(settings)`` the same after storing the logs of crashed
  processes (what reads or delivers events without a ``Meter`` must use it).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from jevons.ledger.base import EventQuery, EventStore, MemoryStore

if TYPE_CHECKING:
    from jevons.config import Settings
    from jevons.events import Event
    from jevons.ledger.database import SQLLedger

__all__ = [
    "EventQuery", "EventStore", "MemoryStore", "ledger_identity", "open_ledger", "open_recovered_ledger",
    "open_store", "resolve_dsn",
]

log = logging.getLogger("jevons.ledger")


def resolve_dsn(settings: Settings) -> str:
    """The PostgreSQL DSN: from the variable named by ``ledger.dsn_env``, else ``ledger.dsn``."""
    from jevons.config import ConfigError

    cfg = settings.ledger
    if cfg.dsn_env:
        value = os.environ.get(cfg.dsn_env)
        if not value:
            raise ConfigError(f"ledger.dsn_env: environment variable {cfg.dsn_env} is not set")
        return value
    if cfg.dsn:
        return cfg.dsn
    raise ConfigError("ledger.backend = 'postgres' needs ledger.dsn or ledger.dsn_env")


def open_ledger(settings: Settings | None = None) -> SQLLedger:
    """The ledger database named by ``[ledger]`` (SQLite file by default)."""
    from jevons.config import ConfigError, load_settings
    from jevons.ledger.database import postgres_ledger, sqlite_ledger

    settings = settings or load_settings()
    cfg = settings.ledger
    if cfg.backend == "postgres":
        return postgres_ledger(resolve_dsn(settings), schema=cfg.pg_schema, prefix=cfg.table_prefix)
    if cfg.backend == "memory":
        raise ConfigError("ledger.backend = 'memory' has no database (events live in one process)")
    return sqlite_ledger(_sqlite_path(settings), prefix=cfg.table_prefix)


def ledger_identity(settings: Settings) -> str:
    """The identity of the ledger ``open_ledger(settings)`` opens, known without opening it."""
    from jevons.ledger.database import postgres_identity, sqlite_identity

    cfg = settings.ledger
    if cfg.backend == "postgres":
        return postgres_identity(resolve_dsn(settings), cfg.pg_schema, cfg.table_prefix)
    return sqlite_identity(_sqlite_path(settings), cfg.table_prefix)


def _sqlite_path(settings: Settings) -> Path:
    cfg = settings.ledger
    return Path(cfg.path).expanduser() if cfg.path else settings.home_dir / "ledger" / "ledger.db"


def open_recovered_ledger(settings: Settings) -> SQLLedger:
    """The ledger database, after storing the append logs that crashed processes of this host
    left in ``JEVONS_HOME`` (``jevons.ledger.journal.recover_journals``, the recovery a
    ``Meter`` runs when it starts; logs of live processes are left alone).

    Events a killed process acknowledged are in its log, not yet in the database: whatever
    reads or delivers events without starting a ``Meter`` (``jevons events``, ``jevons outbox
    drain``, a drainer service) must recover first, or it neither sees nor delivers them."""
    from jevons.ledger.journal import recover_journals

    ledger = open_ledger(settings)
    try:
        recover_journals(ledger, journal_dir(settings, ledger))
    except BaseException:
        ledger.close()
        raise
    return ledger


def journal_dir(settings: Settings, ledger: SQLLedger | None = None) -> Path:
    """Where this host's append logs for the ledger live (one directory per database)."""
    base = (
        Path(settings.ledger.journal_dir).expanduser()
        if settings.ledger.journal_dir
        else settings.home_dir / "ledger" / "journal"
    )
    identity = ledger.identity if ledger is not None else ledger_identity(settings)
    return base / hashlib.sha256(identity.encode()).hexdigest()[:16]


def open_store(settings: Settings | None = None, *,
               read_capture: Callable[[bytes], Event] | None = None) -> EventStore:
    """The event store ``Meter`` uses by default.

    ``[ledger] backend = "memory"`` gives a ``MemoryStore``; otherwise a ``JournaledStore``
    over the SQLite or PostgreSQL ledger, which also recovers the logs of crashed processes.
    ``read_capture`` rebuilds the deferred captures of such a log (``Meter`` passes one bound
    to its price book; default: the default book).

    A database that cannot be opened now (server down, disk unavailable) does not stop the
    store: it starts on its append log and opens the database when it answers
    (``jevons.ledger.deferred``); nothing appended meanwhile is lost. A configuration error
    still raises.
    """
    from jevons.config import load_settings
    from jevons.ledger.database import LedgerError
    from jevons.ledger.deferred import DeferredLedger
    from jevons.ledger.journal import JournaledStore

    settings = settings or load_settings()
    cfg = settings.ledger
    if cfg.backend == "memory":
        return MemoryStore()
    def ledger_or_deferred() -> SQLLedger:
        try:
            return open_ledger(settings)
        except LedgerError as exc:
            log.warning("jevons: the ledger database cannot be opened now (%s); events are kept in "
                        "the append log until it can", exc)
            # the drain and queries use it as the ledger: every use opens it or raises LedgerError
            return cast("SQLLedger", DeferredLedger(lambda: open_ledger(settings),
                                                    ledger_identity(settings), str(exc)))

    ledger = ledger_or_deferred()
    return JournaledStore(
        ledger,
        journal_dir(settings, ledger),
        durability=cfg.durability,
        flush_interval_ms=cfg.flush_interval_ms,
        recent_keys=cfg.recent_keys,
        reopen=ledger_or_deferred,  # a forked child too starts while the database is down
        read_capture=read_capture,
    )
