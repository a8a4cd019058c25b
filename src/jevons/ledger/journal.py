"""The hot-path store: a per-process append log drained into the database by a background thread.

``append`` encodes the event once into its stored form (``jevons.ledger.codec``, ~3 us) and
stores it as one line in this process's log, memory-mapped segment files
(``jevons.ledger.maplog``): a copy into the kernel's page cache, no system call, the GIL kept.
Once the copy is made the line survives ``kill -9`` of the process (not a power loss or a
kernel crash; see the durability modes below). The same bytes, with the few indexed columns
read off the event object, are the database row; ``append`` hands that row to a background
thread, which inserts what is new in one transaction per batch (group commit). The drain
therefore parses and encodes nothing, and the whole batch goes to SQLite as one statement,
which runs without holding the GIL: the appending threads keep running while it commits.

``append_capture`` is the metered call's path (``jevons.capture.record``): the line is a
snapshot of the call, not an event, and the drain thread builds the event (``complete``, in
log order, before the commit; its sinks run then) and commits its row. ``settle`` waits for
those builds, ``flush`` for the commit.

The log is only read back when rows were not kept in memory: when the database fell more than
``memory_rows_bytes`` (32 MB) behind (an outage), the rows are dropped from memory and the
drain re-reads the log from the last committed offset until it has caught up (capture lines
are then rebuilt by ``read_capture``). A drain kept from the GIL by a busy caller thread is
lent it by the appending threads once more than ``lend_bytes`` (1 MB) wait in memory (see
``_lend``). Committed segments are deleted. A process that finds
another process's log whose owner is gone (the ``flock`` it held is free) drains that log and
deletes it: the start-up recovery after a crash. Re-draining is harmless because the database
keeps one event per idempotency key.

Durability modes (``[ledger] durability``):

- ``strict`` (default): as above. Loses nothing when the process dies. On a power loss or kernel
  crash, events not yet committed to the database can be lost: at most the drain interval
  (``flush_interval_ms``, default 5 ms) plus one commit.
- ``sync``: ``append`` also waits until the database commit that holds the event (group
  commit: concurrent callers share one commit); survives power loss as far as the database does
  (SQLite ``synchronous=FULL``, PostgreSQL's default ``fsync``). Costs about one commit latency.
- ``fast``: no log file; events wait in memory for the background commit. A ``kill -9`` loses at
  most ``flush_interval_ms`` of events. Opt-in only.

``append`` returns ``False`` for an idempotency key this process appended recently (the last
``recent_keys`` keys); the database's unique key makes sure a key is stored once in every case,
including duplicates across processes, which ``append`` cannot see without a round trip.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from jevons.events import Event
from jevons.ledger.base import CAPTURE_PREFIX, EventQuery
from jevons.ledger.codec import IndexRow, UnknownLayoutError, decode_index, encode_event, index_row
from jevons.ledger.database import LedgerError, SQLLedger
from jevons.ledger.maplog import NEW_SUFFIX, SUFFIX, MappedLog, read_segment

__all__ = ["Durability", "JournaledStore", "recover_journals"]

log = logging.getLogger("jevons.ledger")

Durability = Literal["strict", "sync", "fast"]
_MAX_BATCH = 20_000
_YIELD_EVERY = 256  # events encoded by append_many between hand-overs of the GIL
_QUARANTINE = "quarantine.jsonl"  # unreadable log lines, in the log's directory

CaptureReader = Callable[[bytes], Event]


def default_capture_reader() -> CaptureReader:
    """Rebuilds capture lines with the default price book (loaded on first use)."""
    from jevons.capture.record import capture_reader

    return capture_reader(None)


#: a deferred capture in the drain's queue: ``(_PENDING, line, item, complete)`` beside the
#: index rows (whose first element is a key string); a tuple, not an object: it is made on the
#: caller's thread of every metered call
_PENDING = object()
_Pending = tuple[object, bytes, Any, Callable[[Any], Event]]


def _parse_lines(data: bytes, source: Path, quarantine: Path, ledger: SQLLedger,
                 read_capture: CaptureReader | None = None) -> list[IndexRow]:
    """The database rows of the log lines in ``data`` (unreadable lines go to ``quarantine``)."""
    rows: list[IndexRow] = []
    for n, line in enumerate(data.split(b"\n")):
        if not line:
            continue
        if n % 16 == 15:
            # give the GIL away: an appending thread must not wait a whole switch interval
            time.sleep(0)
        try:
            if line.startswith(CAPTURE_PREFIX):  # a call whose event was not built yet
                reader = read_capture or default_capture_reader()
                read_capture = reader
                rows.append(index_row(reader(line)))
                continue
            try:
                rows.append(decode_index(line))
            except UnknownLayoutError:
                # written by a version whose layout was recorded after this process started
                ledger.load_layouts()
                rows.append(decode_index(line))
        except Exception as exc:  # a bad line must not stop the drain
            log.error("jevons ledger: unreadable line in %s quarantined: %s", source, exc)
            with open(quarantine, "ab") as fh:
                fh.write(line + b"\n")
    return rows


def _remove_abandoned_new_segments(directory: Path, min_age_s: float = 60.0) -> None:
    """Delete segments whose process died while creating them (``NEW_SUFFIX``, unlocked, older
    than a minute: a segment is created, locked and renamed within microseconds, and the age
    keeps this from racing a creation): no line was ever written to one."""
    for path in directory.glob(f"*{NEW_SUFFIX}"):
        try:
            if time.time() - path.stat().st_mtime < min_age_s:
                continue
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
        except BlockingIOError:
            pass  # being created right now
        finally:
            os.close(fd)


def recover_journals(ledger: SQLLedger, directory: Path, *, skip: Iterable[Path] = (),
                     read_capture: CaptureReader | None = None) -> int:
    """Drain and delete every log in ``directory`` whose owner process is gone; return the
    number of events newly stored. Capture lines (calls whose process died before building
    their event) are rebuilt by ``read_capture`` (default: with the default price book)."""
    stored = 0
    if not directory.is_dir():
        return 0
    _remove_abandoned_new_segments(directory)
    skipped = set(skip)
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        if path in skipped:
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process owns it
            if not path.exists():
                continue  # drained and deleted by another recoverer meanwhile
            with open(path, "rb") as fh:
                raw = fh.read()
            data = read_segment(raw)
            torn = len(raw.rstrip(b"\0")) - len(data)
            if torn > 0:
                # a torn last line: an append that never completed, hence never acknowledged
                log.warning("jevons ledger: dropping %d unterminated bytes at the end of %s", torn, path)
            rows = _parse_lines(data, path, directory / _QUARANTINE, ledger, read_capture)
            for i in range(0, len(rows), _MAX_BATCH):
                stored += ledger.insert_rows(rows[i : i + _MAX_BATCH])
            path.unlink(missing_ok=True)
            if rows:
                log.info("jevons ledger: recovered %d events from %s", len(rows), path.name)
        finally:
            os.close(fd)
    return stored


_ORPHANED_CONNECTIONS: list[SQLLedger] = []


def _after_fork(ref: weakref.ref[JournaledStore]) -> None:
    store = ref()
    if store is not None and not store._closed:
        try:
            store._restart_in_child()
        except Exception as exc:  # the child must still start; appends will raise and be counted
            log.error("jevons ledger: could not reopen the ledger after fork: %s", exc)
            store._closed = True


class JournaledStore:
    """``EventStore`` with a microsecond ``append``: see the module docstring."""

    def __init__(
        self,
        ledger: SQLLedger,
        directory: Path,
        *,
        durability: Durability = "strict",
        flush_interval_ms: float = 5.0,
        recent_keys: int = 100_000,
        rotate_bytes: int = 16 << 20,
        memory_rows_bytes: int = 32 << 20,
        lend_bytes: int = 1 << 20,
        on_error: Callable[[BaseException], None] | None = None,
        reopen: Callable[[], SQLLedger] | None = None,
        read_capture: CaptureReader | None = None,
    ) -> None:
        self.ledger = ledger
        self.read_capture = read_capture
        self._reopen = reopen
        self.sync_timeout_s = 10.0
        self.directory = directory
        self.durability = durability
        # whether metered calls may be handed over as captures (``append_capture``): not in
        # ``sync`` mode, where every call waits for its own commit anyway
        self.takes_captures = durability != "sync"
        self._interval = max(flush_interval_ms, 0.1) / 1000.0
        self._recent_max = recent_keys
        self._recent: set[str] = set()
        self._recent_order: deque[str] = deque()
        self._rotate_bytes = rotate_bytes
        self._on_error = on_error
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._drained_cond = threading.Condition()
        # cumulative over the log's segments: bytes (of log lines; none are written in fast
        # mode) handed to the log, and of those, committed to the database
        self._written = 0
        self._drained = 0
        # rows appended and not yet taken by the drain (in log order); rows taken and not yet
        # committed; whether the rows were dropped from memory for the drain to re-read the log
        self._row_cap_bytes = memory_rows_bytes
        # a drain starved of the GIL (see ``_lend``): past this much waiting in memory, an
        # appending caller waits for it, at most ``_lend_wait_s`` once every ``_lend_every_s``
        self._lend_bytes = lend_bytes
        self._lend_wait_s = 0.05
        self._lend_every_s = 1.0
        self._next_lend = 0.0
        self._kept_bytes = 0
        self._rows: list[IndexRow | _Pending] = []
        self._carry: list[IndexRow] = []
        self._carry_bytes = 0  # of _carry, once a commit of it failed
        self._orphans: list[_Pending] = []  # captures dropped from memory by a spill (see _keep)
        # captures handed over, and of those, built (their events exist, their sinks ran)
        self._captures = 0
        self._built = 0
        self._built_cond = threading.Condition()
        self._spilled = False
        self._stats = {"appended": 0, "duplicates": 0, "stored": 0, "db_duplicates": 0,
                       "drain_errors": 0, "recovered": 0, "lends": 0}  # ("appended": + _captures)
        self.last_error: str | None = None
        self._log: MappedLog | None = None
        directory.mkdir(parents=True, exist_ok=True)
        if durability != "fast":
            self._log = MappedLog(directory, rotate_bytes)
        self._last_recovery = time.monotonic()
        try:
            self._stats["recovered"] = recover_journals(ledger, directory, skip=self._own_paths(),
                                                        read_capture=self._reader())
        except LedgerError as exc:  # the database is down: the drain recovers them once it is up
            log.warning("jevons ledger: start-up recovery postponed: %s", exc)
            self._last_recovery = float("-inf")
        self._thread = threading.Thread(target=self._run, name="jevons-ledger-drain", daemon=True)
        self._thread.start()
        if reopen is not None:
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    def _restart_in_child(self) -> None:
        """After ``fork``: the child gets its own log, database connections and drain thread.

        The parent's log stays the parent's (closing the child's copy of the descriptor keeps
        the parent's ``flock``); the parent's connections are kept referenced but never used or
        closed here, since closing a shared socket would break the parent's session."""
        assert self._reopen is not None
        _ORPHANED_CONNECTIONS.append(self.ledger)
        if self._log is not None:
            self._log.abandon()
            self._log = None
        self._lock = threading.Lock()
        self._drained_cond = threading.Condition()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._rows = []
        self._kept_bytes = 0
        self._carry = []
        self._carry_bytes = 0
        self._orphans = []
        self._stats["appended"] += self._captures
        self._captures = self._built = 0
        self._built_cond = threading.Condition()
        self._spilled = False
        self._written = self._drained = 0
        self.ledger = self._reopen()
        if self.durability != "fast":
            self._log = MappedLog(self.directory, self._rotate_bytes)
        self._thread = threading.Thread(target=self._run, name="jevons-ledger-drain", daemon=True)
        self._thread.start()

    # -- the log ----------------------------------------------------------------------------
    def _own_paths(self) -> list[Path]:
        return [] if self._log is None else self._log.paths

    # -- EventStore -----------------------------------------------------------------------
    def _reader(self) -> CaptureReader:
        if self.read_capture is None:
            self.read_capture = default_capture_reader()
        return self.read_capture

    def _keep(self, rows: list[IndexRow], size: int) -> None:
        """Hand ``rows`` (just written to the log, in log order) to the drain; under the lock."""
        if self._spilled:
            return
        if self.durability != "fast" and self._kept_bytes + self._carry_bytes > self._row_cap_bytes:
            # the database is slow or down: stop holding rows in memory, the drain reads
            # them back from the log once it catches up (captures among them are still
            # completed, for the meter's sinks and counts; their rows come from the log)
            self._spilled = True
            self._orphans += [r for r in self._rows if r[0] is _PENDING]  # type: ignore[misc]
            self._rows = []
            self._kept_bytes = 0
            return
        self._rows += rows
        self._kept_bytes += size

    def append(self, event: Event) -> bool:
        """Store ``event``; returns once it survives the death of this process (``strict``)."""
        raw = encode_event(event)
        row = index_row(event, raw)  # the database row, built once here: the drain re-encodes nothing
        key = event.idempotency_key
        with self._lock:
            if self._closed:
                raise RuntimeError("jevons ledger store is closed")
            if key in self._recent:
                self._stats["duplicates"] += 1
                return False
            if self._log is not None:
                self._log.append_line(raw)
            self._written += len(raw) + 1
            self._keep([row], len(raw))
            self._recent.add(key)
            self._recent_order.append(key)
            if len(self._recent_order) > self._recent_max:
                self._recent.discard(self._recent_order.popleft())
            self._stats["appended"] += 1
            target = self._written
            lend = self._kept_bytes > self._lend_bytes
        if self.durability == "sync":
            self._wait_committed(target)
        elif lend:
            self._lend(target)
        return True

    def append_capture(self, line: bytes, item: Any, complete: Callable[[Any], Event]) -> bool:
        """Log a finished call whose event is built later (``jevons.capture.record``): ``line``
        is written like an event's line (durable once this returns, in ``strict`` mode), and
        the drain thread calls ``complete(item)`` for the event, in log order, before it
        commits. The event's key is fresh (never a duplicate). False: not taken (not
        ``takes_captures``, the database is behind and rows are not held in memory, or the
        store is closed); build the event now (``append`` then reports a closed store: one
        error for the call, not one here and one there)."""
        with self._lock:
            kept = self._kept_bytes
            if (self._closed or self._spilled or not self.takes_captures
                    or kept + self._carry_bytes > self._row_cap_bytes):
                return False
            log = self._log
            if log is not None:
                seg = log.current
                p = seg.pos
                end = p + len(line)
                if end < seg.size:  # ``MappedLog.append_line``'s write, without its frame
                    mm = seg.mm
                    mm[p:end] = line
                    mm[end] = 10  # the newline after the line: a line with its newline is whole
                    seg.pos = end + 1
                else:
                    log.append_line(line)  # a new segment
            size = len(line) + 1
            self._written += size
            self._kept_bytes = kept = kept + size
            self._rows.append((_PENDING, line, item, complete))
            self._captures += 1  # (counted as appended by ``stats``)
            if kept <= self._lend_bytes:
                return True
            target = self._written
        self._lend(target)
        return True

    def _lend(self, target: int) -> None:
        """Give the drain thread the GIL it is starved of, by waiting for it (at most
        ``_lend_wait_s``, at most once every ``_lend_every_s``, never while the database is
        failing): called by an appending thread when more than ``lend_bytes`` wait in memory.

        Why: CPython hands the GIL to a waiting thread only after it has waited a whole switch
        interval (5 ms) uninterrupted, and every release by the running thread restarts that
        wait. A caller thread that is busy and releases the GIL briefly and often (the OpenAI
        SDK's ``uuid4()`` reads ``os.urandom`` on every request; an event loop polls with a zero
        timeout) therefore keeps the drain from ever running: measured, no event committed in
        seconds of such calls, the backlog (and the live responses it holds for the garbage
        collector to walk) growing until ``memory_rows_bytes``, after which every metered call
        takes the slower synchronous path. A drain that keeps up never gets here."""
        now = time.monotonic()
        if (now < self._next_lend or self.last_error is not None
                or threading.get_ident() == self._thread.ident):  # (a sink appending, on the drain)
            return
        self._next_lend = now + self._lend_every_s
        with self._lock:
            self._stats["lends"] += 1
        try:
            self._wait_drained(target, self._lend_wait_s)
        except Exception as exc:  # the line is written: the caller must not record it again
            log.warning("jevons ledger: lending the drain the GIL failed: %r", exc)

    def settle(self, timeout: float | None = 30.0) -> bool:
        """Wait until every capture handed over so far has its event built (and the sinks
        that ``complete`` feeds have seen it), committed or not: unlike ``flush``, this does
        not wait for a database that is down."""
        with self._lock:
            target = self._captures
        return self._wait_for(self._built_cond, lambda: self._built >= target, timeout)

    def _wait_for(self, cond: threading.Condition, reached: Callable[[], bool],
                  timeout: float | None) -> bool:
        """Wake the drain and wait (``cond`` notified by it) until ``reached()``; False on
        timeout or when the drain thread died."""
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with cond:
            while not reached():
                if not self._thread.is_alive() and not self._closed:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                cond.wait(0.05 if left is None else min(left, 0.05))
        return True

    def _count_built(self, n: int) -> None:
        if n:
            with self._built_cond:
                self._built += n
                self._built_cond.notify_all()

    def _materialize(self, pending: _Pending) -> IndexRow | None:
        """The row of a deferred capture: its event from ``complete`` (which also hands it to
        the meter's sinks), else rebuilt from its log line; ``None`` if neither works (the
        line is quarantined)."""
        _, line, item, complete = pending
        try:
            return index_row(complete(item))
        except Exception as exc:
            log.error("jevons ledger: building a captured event failed (%r); rebuilt from its log line", exc)
        rows = self._parse_own(line)
        return rows[0] if rows else None

    def _parse_own(self, data: bytes) -> list[IndexRow]:
        """The rows of lines of this process's own log (see ``_parse_lines``)."""
        return _parse_lines(data, self.directory / "(this process's log)",
                            self.directory / _QUARANTINE, self.ledger, self._reader())

    def append_many(self, events: Iterable[Event]) -> int:
        """Store several events with one ``write`` (and, in ``sync`` mode, one wait).

        Encoding is pure Python and holds the GIL; the drain thread's inserts run without it
        but must take it back between statements, which can cost it a whole switch interval
        (5 ms) behind a busy encoder. So the encoding hands the GIL over every
        ``_YIELD_EVERY`` events (one ``sleep(0)``, ~1 us). On 2 cores this raised batched
        throughput by a fifth to a third on SQLite and PostgreSQL (figures: docs/ledger.md)."""
        batch = events if isinstance(events, list) else list(events)
        encoded: list[tuple[Event, bytes, IndexRow]] = []
        for start in range(0, len(batch), _YIELD_EVERY):
            if start:
                time.sleep(0)
            encoded += [(e, raw, index_row(e, raw))
                        for e in batch[start : start + _YIELD_EVERY] for raw in (encode_event(e),)]
        lines: list[bytes] = []
        rows: list[IndexRow] = []
        with self._lock:
            if self._closed:
                raise RuntimeError("jevons ledger store is closed")
            for event, raw, row in encoded:
                key = event.idempotency_key
                if key in self._recent:
                    self._stats["duplicates"] += 1
                    continue
                lines.append(raw)
                rows.append(row)
                self._recent.add(key)
                self._recent_order.append(key)
            while len(self._recent_order) > self._recent_max:
                self._recent.discard(self._recent_order.popleft())
            if not lines:
                return 0
            data = b"\n".join(lines) + b"\n"
            if self._log is not None:
                self._log.append_block(data)
            self._written += len(data)
            self._keep(rows, len(data))
            self._stats["appended"] += len(lines)
            target = self._written
        if self.durability == "sync":
            self._wait_committed(target)
        return len(lines)

    def query(self, q: EventQuery | None = None) -> list[Event]:
        """Events matching ``q``, including every event appended before the call. A database
        not opened yet (down since start-up) raises ``LedgerError`` at once, without waiting
        for a flush that cannot happen."""
        opened = getattr(self.ledger, "opened", None)
        if opened is not None:
            opened()
        self.flush()
        return self.ledger.query(q)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything appended so far is committed to the database."""
        with self._lock:
            target = self._written
        self._wake.set()
        return self._wait_drained(target, timeout)

    def close(self) -> None:
        """Drain what is left, delete this process's log and close the database."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=60.0)
        with contextlib.suppress(Exception):
            self._drain_once()
        clean = self._drained >= self._written
        if self._log is not None:
            # a log with uncommitted lines is kept: the next start recovers it
            self._log.close(delete=clean)
            self._log = None
        self.ledger.close()

    def stats(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._stats)
            out["appended"] += self._captures
            out["pending"] = self._written - self._drained
        return out

    # -- the drain ------------------------------------------------------------------------
    def _wait_committed(self, target: int) -> None:
        """``sync`` mode: wait for the commit, but never hang the caller on a dead database."""
        if not self._wait_drained(target, timeout=self.sync_timeout_s):
            raise LedgerError(
                f"not committed within {self.sync_timeout_s:g}s ({self.last_error or 'database slow'}); "
                "the event is kept in the append log and will be stored when the database is back"
            )

    def _wait_drained(self, target: int, timeout: float | None) -> bool:
        return self._wait_for(self._drained_cond, lambda: self._drained >= target, timeout)

    def _drain_once(self) -> int:
        """Commit what was appended since the last drain; return the number of events read.

        Normally the rows built by ``append`` are committed as they are (no parsing); after
        a spill (the database fell behind by more than ``memory_rows_bytes`` of events) the log is read
        back from the last committed offset instead, until the drain has caught up."""
        with self._lock:
            upto = self._written
            spilled = self._spilled
            taken: list[IndexRow | _Pending] = []
            if not spilled:
                taken, self._rows = self._rows, []
                self._kept_bytes = 0
            orphans, self._orphans = self._orphans, []
        for _, _, item, complete in orphans:  # spilled captures: their rows come from the log
            with contextlib.suppress(Exception):
                complete(item)
        self._count_built(len(orphans))
        if spilled:
            self._carry = []  # the log holds those rows too, from the committed offset on
            with self._lock:
                self._carry_bytes = 0
            return self._drain_log(upto)
        rows = self._carry
        built = 0
        for r in taken:
            if r[0] is _PENDING:
                built += 1
                row = self._materialize(r)  # type: ignore[arg-type]
                if row is not None:
                    rows.append(row)
            else:
                rows.append(r)  # type: ignore[arg-type]
        self._count_built(built)
        if not rows:
            self._maybe_rotate()
            return 0
        self._carry = rows
        try:
            for i in range(0, len(rows), _MAX_BATCH):
                self._commit(rows[i : i + _MAX_BATCH])
                self._carry = rows[i + _MAX_BATCH :]  # what is left if the next chunk fails
        except BaseException:
            # the database is down: what waits in memory counts against memory_rows_bytes
            # too, or an outage of hours would grow it without bound (see _keep)
            carry_bytes = sum(len(r[-1]) + 1 for r in self._carry)
            with self._lock:
                self._carry_bytes = carry_bytes
            raise
        if self._carry_bytes:
            with self._lock:
                self._carry_bytes = 0
        self._set_drained(upto)
        return len(rows)

    def _drain_log(self, upto: int) -> int:
        """Commit the log from the committed offset up to ``upto``, parsing its lines."""
        size = upto - self._drained
        n = 0
        if size > 0 and self._log is not None:
            with self._lock:  # the log's segment list changes under the lock
                data = self._log.read(self._drained, upto)
            cut = data.rfind(b"\n") + 1  # whole lines only (always all of it: lines are written whole)
            rows = self._parse_own(data[:cut])
            for i in range(0, len(rows), _MAX_BATCH):
                self._commit(rows[i : i + _MAX_BATCH])
            n = len(rows)
            with self._lock:
                if self._drained + cut >= self._written:
                    self._spilled = False  # caught up: appends hand their rows over again
            self._set_drained(self._drained + cut)
        else:
            with self._lock:
                self._spilled = self._drained < self._written
        return n

    def _commit(self, rows: list[IndexRow]) -> None:
        if not rows:
            return
        stored = self.ledger.insert_rows(rows)
        with self._lock:
            self._stats["stored"] += stored
            self._stats["db_duplicates"] += len(rows) - stored

    def _set_drained(self, value: int) -> None:
        with self._drained_cond:
            self._drained = value
            self._maybe_rotate()  # before waking waiters: a flushed store has rotated its log
            self._drained_cond.notify_all()

    def _maybe_rotate(self) -> None:
        """Delete the log segments whose lines are all committed."""
        if self._log is None:
            return
        with self._lock:
            if self._log is not None:
                self._log.release(self._drained)

    def _run(self) -> None:
        backoff = self._interval
        while not self._stop.is_set():
            self._wake.wait(backoff)
            self._wake.clear()
            try:
                log_ = self._log
                if log_ is not None:
                    log_.prefault()
                self._drain_once()
                if time.monotonic() - self._last_recovery > 30.0:
                    # timed from a recovery that ran: one that failed (the database still down)
                    # is tried again with the next drain, not 30 s later
                    self._stats["recovered"] += recover_journals(
                        self.ledger, self.directory, skip=self._own_paths(), read_capture=self._reader()
                    )
                    self._last_recovery = time.monotonic()
                backoff = self._interval
                self.last_error = None
            except Exception as exc:  # the log keeps the events; retry later
                self._stats["drain_errors"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("jevons ledger: drain failed (events stay in the log): %s", exc)
                if self._on_error is not None:
                    with contextlib.suppress(Exception):
                        self._on_error(exc)
                backoff = min(max(backoff * 2, 0.05), 5.0)
