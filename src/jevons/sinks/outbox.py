"""The outbox: delivers ledger events to each sink, at least once, resumable, never stuck.

Each sink has a cursor (the last event sequence number it has dealt with) in the ledger. A
drain reads the events after the cursor in chunks, lets the sink turn each into wire records,
sends them in batches, and commits the new cursor together with the events it parked:

- ``dead_letter``: the sink refused the event for good (a 4xx naming it, or found by bisecting
  a refused batch); the rest of the batch still goes. ``replay`` sends them again.
- ``waiting_for_price``: a price-mode sink cannot bill an unpriced event (never as $0); it is
  released and sent as soon as ``jevons reprice`` gave it a price.
- ``unattributed``: an event without a customer cannot be billed to anyone.

Transient failures (5xx, 429, timeouts, resets) are retried with exponential backoff and
jitter, waiting at least what ``Retry-After`` asked; after ``max_attempts`` the drain stops with
the error recorded and the cursor where it was: the backlog waits on disk for the next drain.
A ``Retry-After`` longer than the drain may wait (``max_seconds``) stops it at once, and the
report says how long the server asked for (``retry_after_s``): ``OutboxWorker`` leaves that sink
alone until then, so a server that says "come back in a minute" gets no request before.
A drain that dead-lettered events records the first refusal as the sink's ``last_error`` (and
``jevons outbox dead-letters`` lists every parked event with its reason): a refused event must
not go unnoticed because the rest of its batch went through.
A crash after a send and before the cursor commit sends that chunk again; every record carries
the event's idempotency key, so the sink keeps one copy.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from jevons.events import Event
from jevons.ledger.database import SQLLedger
from jevons.ledger.schema import now_us
from jevons.sinks.base import Hold, Record, RejectedError, Sink, SinkUnavailable, TransientError, kind_of

__all__ = ["DrainReport", "Outbox", "OutboxWorker", "RetryPolicy", "SinkStatus", "sink_statuses"]

log = logging.getLogger("jevons.sinks")

#: ``DrainReport.stopped`` of a drain that reached its ``max_seconds``
TIME_LIMIT = "time limit reached"
#: ``DrainReport.stopped`` when another process holds the sink's drain lease
LEASED_ELSEWHERE = "another process is draining this sink"

DEAD_LETTER = "dead_letter"
WAITING_FOR_PRICE = "waiting_for_price"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff ``base_s * factor**n`` capped at ``max_s``, with jitter over its upper half."""

    base_s: float = 0.5
    factor: float = 2.0
    max_s: float = 60.0
    max_attempts: int = 8
    max_retry_after_s: float = 3600.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        cap = min(self.max_s, self.base_s * self.factor ** max(attempt - 1, 0))
        wait = cap / 2 + rng.uniform(0, cap / 2)
        capped = self.retry_after(retry_after)
        if capped is not None:
            wait = max(wait, capped)
        return wait

    def retry_after(self, asked: float | None) -> float | None:
        """What a server's ``Retry-After`` is honoured as: at most ``max_retry_after_s`` (a
        misconfigured server must not park a sink for days)."""
        return None if asked is None else min(asked, self.max_retry_after_s)


@dataclass(slots=True)
class DrainReport:
    sink: str
    delivered: int = 0
    dead_lettered: int = 0
    held: int = 0
    released: int = 0
    retries: int = 0
    stopped: str | None = None
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    #: the drain stopped on a ``Retry-After`` (capped): seconds before the sink may be asked again
    retry_after_s: float | None = None
    #: the reason the first event of this drain was dead-lettered with
    dead_letter_error: str | None = None


@dataclass(frozen=True, slots=True)
class SinkStatus:
    sink: str
    kind: str
    pending: int
    oldest_pending_age_s: float | None
    delivered: int
    dead_lettered: int
    waiting_for_price: int
    unattributed: int
    last_error: str | None
    last_error_age_s: float | None
    last_success_age_s: float | None


class _Stop(Exception):
    """The sink is down (retries exhausted) or refuses us (auth): stop this drain.
    ``retry_after``: the server asked not to be called again for this long (capped)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Outbox:
    def __init__(
        self,
        ledger: SQLLedger,
        sinks: Mapping[str, Sink],
        *,
        retry: RetryPolicy | None = None,
        retries: Mapping[str, RetryPolicy] | None = None,
        fetch_size: int = 2000,
        concurrency: int = 4,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
        lease_ttl_s: float = 120.0,
        on_close: Sequence[Callable[[], None]] = (),
    ) -> None:
        """``on_close``: run by ``close`` after the sinks close (what was opened for them, such
        as the policy store behind Lago price mode's ``amount_for``)."""
        self.ledger = ledger
        self.sinks = dict(sinks)
        self.retry = retry or RetryPolicy()
        self.retries: dict[str, RetryPolicy] = dict(retries or {})
        self.fetch_size = fetch_size
        self.concurrency = max(1, concurrency)
        self._report_lock = threading.Lock()
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease_ttl = lease_ttl_s
        self._on_close = list(on_close)

    def _sink(self, name: str) -> Sink:
        try:
            return self.sinks[name]
        except KeyError:
            raise KeyError(f"no sink named {name!r} (configured: {', '.join(self.sinks) or 'none'})") \
                from None

    # -- sending --------------------------------------------------------------------------
    def _send_with_retry(self, sink: Sink, records: Sequence[Record], report: DrainReport,
                         deadline: float | None) -> None:
        policy = self.retries.get(sink.name, self.retry)
        attempt = 0
        while True:
            attempt += 1
            try:
                try:
                    sink.send(records)
                except (TransientError, SinkUnavailable, RejectedError):
                    raise
                except Exception as exc:  # a sink bug or an odd answer: retried, then reported
                    raise TransientError(f"{type(exc).__name__}: {exc}") from exc
                return
            except TransientError as exc:
                with self._report_lock:
                    report.retries += 1
                msg = str(exc)
                asked = policy.retry_after(exc.retry_after)
                if attempt >= policy.max_attempts:
                    raise _Stop(f"{msg} (gave up after {attempt} attempts)", asked) from exc
                wait = policy.delay(attempt, exc.retry_after, self._rng)
                if deadline is not None and time.monotonic() + wait > deadline:
                    why = "deadline reached" if asked is None else \
                        f"Retry-After {asked:g}s is past the deadline"
                    raise _Stop(f"{msg} ({why})", asked) from exc
                log.info("jevons sink %s: %s; retrying in %.2fs", sink.name, msg, wait)
                self._sleep(wait)
            except SinkUnavailable as exc:
                raise _Stop(str(exc)) from exc

    def _deliver(
        self, sink: Sink, items: Sequence[tuple[int, list[Record]]], report: DrainReport,
        deadline: float | None,
    ) -> tuple[list[int], list[tuple[int, str]]]:
        """Send ``items`` (seq, records); return (delivered seqs, dead-lettered (seq, error)).

        Requests of one chunk go out ``concurrency`` at a time: the cursor only moves once the
        whole chunk is settled, so their order does not matter."""
        groups: list[list[tuple[int, list[Record]]]] = []
        group: list[tuple[int, list[Record]]] = []
        size = 0
        for item in items:
            n = len(item[1])
            if group and size + n > sink.max_batch:
                groups.append(group)
                group, size = [], 0
            group.append(item)
            size += n
        if group:
            groups.append(group)

        def one(g: list[tuple[int, list[Record]]]) -> tuple[list[int], list[tuple[int, str]]]:
            ok: list[int] = []
            dead: list[tuple[int, str]] = []
            self._send_group(sink, g, ok, dead, report, deadline, 0)
            return ok, dead

        delivered: list[int] = []
        dead: list[tuple[int, str]] = []
        workers = min(self.concurrency, getattr(sink, "concurrency", self.concurrency), len(groups))
        if workers <= 1:
            results = [one(g) for g in groups]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jevons-send") as pool:
                futures = [pool.submit(one, g) for g in groups]
                results = []
                stop: _Stop | None = None
                for f in futures:
                    try:
                        results.append(f.result())
                    except _Stop as exc:
                        # the longest Retry-After any request was given is the one to honour
                        if stop is None or (exc.retry_after or 0) > (stop.retry_after or 0):
                            stop = exc
                if stop is not None:
                    raise stop
        for ok, bad in results:
            delivered += ok
            dead += bad
        return delivered, dead

    def _send_group(
        self, sink: Sink, group: list[tuple[int, list[Record]]], delivered: list[int],
        dead: list[tuple[int, str]], report: DrainReport, deadline: float | None, depth: int,
    ) -> None:
        group = [g for g in group if g[1]]
        if not group:
            return
        records: list[Record] = []
        owner: list[int] = []
        for i, (_, recs) in enumerate(group):
            records += recs
            owner += [i] * len(recs)
        try:
            self._send_with_retry(sink, records, report, deadline)
            delivered += [seq for seq, _ in group]
            return
        except RejectedError as exc:
            with self._report_lock:
                report.errors.append(str(exc)[:500])
            idx = exc.indexes
            if idx is not None and depth < 3 and all(0 <= i < len(records) for i in idx) and (
                idx or exc.already
            ):
                bad = {owner[i] for i in idx}
                for i in sorted(bad):
                    dead.append((group[i][0], idx[min(k for k in idx if owner[k] == i)]))
                rest: list[tuple[int, list[Record]]] = []
                for i, (seq, recs) in enumerate(group):
                    if i in bad:
                        continue
                    keep = [r for k, r in zip(
                        (k for k, o in enumerate(owner) if o == i), recs, strict=True
                    ) if k not in exc.already]
                    if keep:
                        rest.append((seq, keep))
                    else:
                        delivered.append(seq)
                self._send_group(sink, rest, delivered, dead, report, deadline, depth + 1)
                return
            if len(group) == 1:
                dead.append((group[0][0], str(exc)[:500]))
                return
            mid = len(group) // 2
            self._send_group(sink, group[:mid], delivered, dead, report, deadline, depth)
            self._send_group(sink, group[mid:], delivered, dead, report, deadline, depth)

    def _prepare(self, sink: Sink, chunk: Sequence[tuple[int, Event]],
                 park: list[tuple[int, str, str | None]]) -> list[tuple[int, list[Record]]]:
        items: list[tuple[int, list[Record]]] = []
        for seq, event in chunk:
            try:
                prepared = sink.prepare(event)
            except Exception as exc:  # one bad event must not block the rest
                park.append((seq, DEAD_LETTER, f"prepare failed: {type(exc).__name__}: {exc}"))
                continue
            if isinstance(prepared, Hold):
                park.append((seq, prepared.reason, prepared.detail))
            else:
                items.append((seq, prepared))
        return items

    # -- drains ---------------------------------------------------------------------------
    def drain(self, name: str, *, max_seconds: float | None = None,
              progress: Callable[[int, int], None] | None = None) -> DrainReport:
        """Deliver everything after ``name``'s cursor, and its held events that got a price."""
        sink = self._sink(name)
        report = DrainReport(name)
        started = time.monotonic()
        deadline = None if max_seconds is None else started + max_seconds
        if not self.ledger.acquire_lease(name, self._owner, self._lease_ttl):
            holder = self.ledger.lease_owner(name)
            if holder is None or not _dead_local_owner(holder) or not self.ledger.acquire_lease(
                name, self._owner, self._lease_ttl, take_from=holder
            ):
                report.stopped = LEASED_ELSEWHERE
                return report
        try:
            state = self.ledger.sink_state(name)
            position = state.position
            total, _ = self.ledger.pending(name, position)
            # 1. held events that have a price now
            after = 0
            while report.stopped is None:
                released = self.ledger.released_waiting(name, self.fetch_size, after=after)
                if not released:
                    break
                after = released[-1][0]
                report.released += self._send(name, sink, released, report, deadline, position=None) or 0
            # 2. everything after the cursor
            done = 0
            while report.stopped is None:
                if deadline is not None and time.monotonic() > deadline:
                    report.stopped = TIME_LIMIT
                    break
                chunk = self.ledger.events_after(position, self.fetch_size)
                if not chunk:
                    break
                self.ledger.acquire_lease(name, self._owner, self._lease_ttl)
                position = chunk[-1][0]
                if self._send(name, sink, chunk, report, deadline, position=position) is None:
                    break
                done += len(chunk)
                if progress is not None:
                    progress(done, max(total, done))
            if report.stopped is not None and report.stopped != TIME_LIMIT:
                self.ledger.record_sink_error(name, report.stopped[:500])
            elif report.dead_lettered:
                self.ledger.record_sink_error(name, (
                    f"dead-lettered {report.dead_lettered} event(s) (jevons outbox dead-letters), "
                    f"first: {report.dead_letter_error}")[:500])
            elif report.delivered:
                self.ledger.record_sink_error(name, None)
        finally:
            self.ledger.release_lease(name, self._owner)
            report.seconds = time.monotonic() - started
        return report

    def drain_all(self, *, max_seconds: float | None = None) -> list[DrainReport]:
        return [self.drain(name, max_seconds=max_seconds) for name in self.sinks]

    def replay_dead_letters(self, name: str, *, max_seconds: float | None = None) -> DrainReport:
        """Send ``name``'s dead-lettered events again; those refused again stay dead-lettered."""
        sink = self._sink(name)
        report = DrainReport(name)
        started = time.monotonic()
        deadline = None if max_seconds is None else started + max_seconds
        seqs = [p.seq for p in self.ledger.parked(name, DEAD_LETTER)]
        for i in range(0, len(seqs), self.fetch_size):
            chunk = self.ledger.events_by_seq(seqs[i : i + self.fetch_size])
            self._send(name, sink, chunk, report, deadline, position=None)
            if report.stopped is not None:
                self.ledger.record_sink_error(name, report.stopped[:500])
                break
        report.seconds = time.monotonic() - started
        return report

    def _send(self, name: str, sink: Sink, chunk: Sequence[tuple[int, Event]], report: DrainReport,
              deadline: float | None, *, position: int | None) -> int | None:
        """Deliver ``chunk`` and commit the outcome in one transaction: the cursor moves to
        ``position`` (events after the cursor), or, with ``position=None``, the chunk is parked
        events sent again behind the cursor, unparked once sent. Events the sink refuses are
        dead-lettered, those it holds back are parked (counted as held after the cursor only).
        Returns the number sent; ``None`` on a stop, left in ``report.stopped`` with nothing
        committed."""
        park: list[tuple[int, str, str | None]] = []
        items = self._prepare(sink, chunk, park)
        try:
            ok, dead = self._deliver(sink, items, report, deadline)
        except _Stop as stop:
            report.stopped = str(stop)
            report.retry_after_s = stop.retry_after
            return None
        if position is not None:
            report.held += sum(1 for _, reason, _ in park if reason != DEAD_LETTER)
        park += [(s, DEAD_LETTER, e) for s, e in dead]
        self.ledger.commit_delivery(name, position=position, delivered=len(ok), park=park,
                                    unpark=ok if position is None else ())
        report.delivered += len(ok)
        refused = [error for _, reason, error in park if reason == DEAD_LETTER]
        report.dead_lettered += len(refused)
        if refused and report.dead_letter_error is None:
            report.dead_letter_error = refused[0] or "refused"
        return len(ok)

    # -- status ---------------------------------------------------------------------------
    def status(self) -> list[SinkStatus]:
        return sink_statuses(self.ledger, {name: kind_of(sink) for name, sink in self.sinks.items()})

    def close(self) -> None:
        for sink in self.sinks.values():
            try:
                sink.close()
            except Exception:
                log.exception("jevons sink %s: close failed", getattr(sink, "name", "?"))
        for fn in self._on_close:
            try:
                fn()
            except Exception:
                log.exception("jevons outbox: closing %r failed", fn)


def sink_statuses(ledger: SQLLedger, kinds: Mapping[str, str]) -> list[SinkStatus]:
    """The status of each sink named in ``kinds`` (name -> kind), read from the ledger alone:
    no sink object, hence no secret, is needed to see counters and errors."""
    out: list[SinkStatus] = []
    now = now_us()

    def age(us: int | None) -> float | None:
        return None if us is None else max(now - us, 0) / 1e6

    for name, kind in kinds.items():
        state = ledger.sink_state(name)
        pending, oldest = ledger.pending(name, state.position)
        counts = ledger.parked_counts(name)
        out.append(SinkStatus(
            sink=name,
            kind=kind,
            pending=pending,
            oldest_pending_age_s=age(oldest),
            delivered=state.delivered,
            dead_lettered=counts.get(DEAD_LETTER, 0),
            waiting_for_price=counts.get(WAITING_FOR_PRICE, 0),
            unattributed=counts.get("unattributed", 0),
            last_error=state.last_error,
            last_error_age_s=age(state.last_error_us),
            last_success_age_s=age(state.last_success_us),
        ))
    return out


def _dead_local_owner(owner: str) -> bool:
    """A lease holder ("host:pid:nonce") that ran on this host and is gone (it crashed)."""
    try:
        host, pid, _ = owner.split(":", 2)
        if host != os.uname().nodename:
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return False


#: a drain that stopped for one of these did not fail: the worker goes on as usual
_NOT_FAILURES = frozenset({TIME_LIMIT, LEASED_ELSEWHERE})


class OutboxWorker:
    """Drains every sink in a background thread every ``interval_s`` (for long-lived
    services; ``jevons outbox drain`` does one pass).

    Each drain is bounded (``max(10 x interval_s, 5 s)``) so that one slow sink does not hold
    back the others. A sink whose drain stopped on a ``Retry-After`` longer than that is not
    contacted again until it has passed (capped by its ``max_retry_after_s``): the next drain
    after ``interval_s`` would otherwise ignore what the server asked, once per interval. A
    sink whose drain stopped otherwise (401, a redirect, retries used up, a drain that raised)
    is left alone for ``interval_s x 2^(n-1)`` after its ``n``-th such drain in a row, up to
    ``max_backoff_s``: a misconfigured or failing endpoint is not hit, nor the log filled, once
    per interval; one clean drain resets it."""

    def __init__(self, outbox: Outbox, *, interval_s: float = 1.0, max_backoff_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.outbox = outbox
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self.not_before: dict[str, float] = {}  # sink -> clock() before which it is left alone
        self.failures: dict[str, int] = {}  # sink -> drains in a row that stopped on an error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jevons-outbox", daemon=True)

    def start(self) -> OutboxWorker:
        self._thread.start()
        return self

    def run_once(self) -> list[DrainReport]:
        """One pass over the sinks that may be contacted now (what the thread repeats)."""
        reports: list[DrainReport] = []
        for name in list(self.outbox.sinks):
            if self._stop.is_set():
                break
            if self._clock() < self.not_before.get(name, float("-inf")):
                continue
            try:
                report = self.outbox.drain(name, max_seconds=max(self.interval_s * 10, 5.0))
            except Exception:  # keep the worker alive; the backlog stays
                log.exception("jevons outbox: drain of %s failed", name)
                self._back_off(name)
                continue
            reports.append(report)
            if report.retry_after_s is not None:
                # counted from now, after the drain ended: never earlier than the server asked
                self.not_before[name] = self._clock() + report.retry_after_s
                log.info("jevons outbox: %s asked to wait %.0fs (Retry-After); not contacting it "
                         "before", name, report.retry_after_s)
            elif report.stopped is not None and report.stopped not in _NOT_FAILURES:
                self._back_off(name)
            else:
                self.not_before.pop(name, None)
                self.failures.pop(name, None)
        return reports

    def _back_off(self, name: str) -> None:
        n = self.failures.get(name, 0) + 1
        self.failures[name] = n
        wait = min(self.interval_s * 2 ** min(n - 1, 30), self.max_backoff_s)
        self.not_before[name] = self._clock() + wait
        if n > 1:
            log.info("jevons outbox: %s failed %d drains in a row; next try in %.0fs", name, n, wait)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval_s)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
