"""Delivery through faults: 500s, 429 + Retry-After, timeouts, resets, a poisoned event, a slow
server, a long outage. The sink must end up with every event exactly once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jevons.ledger.database import SQLLedger
from jevons.sinks.base import RejectedError, SinkUnavailable, TransientError, parse_retry_after
from jevons.sinks.lago import LagoSink
from jevons.sinks.openmeter import OpenMeterSink
from jevons.sinks.outbox import Outbox, RetryPolicy
from ledger.helpers import make_event

from .fakes import FakeBilling, Fault

FAST = RetryPolicy(base_s=0.001, max_s=0.01, max_attempts=6)


@pytest.fixture
def sqlite_only(tmp_path: Path) -> Iterator[SQLLedger]:
    """For timing-driven tests whose subject is the outbox, not the backend."""
    from jevons.ledger.database import sqlite_ledger

    led = sqlite_ledger(tmp_path / "ledger.db")
    yield led
    led.close()


@pytest.fixture
def fake() -> Iterator[FakeBilling]:
    with FakeBilling() as f:
        yield f


def _lago(fake: FakeBilling, timeout: float = 5.0) -> LagoSink:
    return LagoSink("lago", fake.url, "secret-key", mode="price", timeout=timeout)


def _fill(ledger: SQLLedger, n: int) -> set[str]:
    events = [make_event(i) for i in range(n)]
    ledger.append_many(events)
    return {e.idempotency_key for e in events}


def test_500s_are_retried_and_nothing_is_lost(ledger: SQLLedger, fake: FakeBilling) -> None:
    keys = _fill(ledger, 300)
    fake.state.faults.extend([Fault("500"), Fault("503"), Fault("500")])
    report = Outbox(ledger, {"lago": _lago(fake)}, retry=FAST).drain("lago")
    assert report.stopped is None and report.retries == 3
    assert fake.keys == keys and fake.state.duplicates == 0


def test_retry_after_is_honoured(ledger: SQLLedger, fake: FakeBilling) -> None:
    _fill(ledger, 10)
    fake.state.faults.extend([Fault("429", retry_after="7"), Fault("429", retry_after="1")])
    waits: list[float] = []
    box = Outbox(ledger, {"lago": _lago(fake)}, retry=FAST, sleep=waits.append)
    assert box.drain("lago").delivered == 10
    assert waits[0] >= 7 and waits[1] >= 1  # the backoff alone would be ~1 ms


def test_retry_after_really_waits(sqlite_only: SQLLedger, fake: FakeBilling) -> None:
    ledger = sqlite_only
    _fill(ledger, 5)
    fake.state.faults.append(Fault("429", retry_after="1"))
    Outbox(ledger, {"lago": _lago(fake)}, retry=FAST).drain("lago")
    t = fake.state.request_times
    assert len(t) == 2 and t[1] - t[0] >= 0.95


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_backoff_grows_with_jitter() -> None:
    import random

    policy = RetryPolicy(base_s=1, factor=2, max_s=30)
    rng = random.Random(1)
    delays = [policy.delay(n, None, rng) for n in range(1, 8)]
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2 and 15 <= delays[6] <= 30
    assert len({round(policy.delay(3, None, rng), 6) for _ in range(5)}) > 1  # jittered


def test_timeouts_and_resets_deliver_exactly_once_in_effect(ledger: SQLLedger, fake: FakeBilling) -> None:
    keys = _fill(ledger, 400)
    fake.state.faults.extend([
        Fault("timeout", seconds=0.6),  # stored, but the answer comes too late
        Fault("reset"),  # dropped before storing
        Fault("reset_after_store"),  # stored, then the connection dies
    ])
    report = Outbox(ledger, {"lago": _lago(fake, timeout=0.3)}, retry=FAST).drain("lago")
    assert report.stopped is None and report.retries == 3
    assert fake.keys == keys
    assert fake.state.duplicates >= 100  # resent batches were deduplicated by the sink
    assert len(fake.state.received) == 400


def test_poisoned_event_is_dead_lettered_without_holding_back_the_rest(
    ledger: SQLLedger, fake: FakeBilling
) -> None:
    keys = _fill(ledger, 250)
    poisoned = sorted(keys)[17]
    fake.state.poison.add(poisoned)
    box = Outbox(ledger, {"lago": _lago(fake)}, retry=FAST)
    report = box.drain("lago")
    assert report.dead_lettered == 1 and report.delivered == 249
    assert fake.keys == keys - {poisoned}
    (st,) = box.status()
    assert st.dead_lettered == 1 and st.pending == 0
    (parked,) = ledger.parked("lago", "dead_letter")
    assert "422" in (parked.error or "")
    # fixed on the sink side: replay
    fake.state.poison.clear()
    replay = box.replay_dead_letters("lago")
    assert replay.delivered == 1
    assert fake.keys == keys and box.status()[0].dead_lettered == 0


def test_refused_batch_without_details_is_bisected(ledger: SQLLedger, fake: FakeBilling) -> None:
    keys = _fill(ledger, 100)
    poisoned = sorted(keys)[42]
    fake.state.poison.add(poisoned)
    sink = OpenMeterSink("om", fake.url, None)
    report = Outbox(ledger, {"om": sink}, retry=FAST).drain("om")
    assert report.dead_lettered == 1 and report.delivered == 99
    assert {k.split("|")[1] for k in fake.keys} == keys - {poisoned}


def test_slow_server_and_time_limit_resume_without_loss(sqlite_only: SQLLedger, fake: FakeBilling) -> None:
    ledger = sqlite_only
    keys = _fill(ledger, 600)
    fake.state.delay_s = 0.25  # per request: 6 chunks of 100 take 1.5 s
    box = Outbox(ledger, {"lago": _lago(fake)}, retry=FAST, fetch_size=100)
    first = box.drain("lago", max_seconds=0.4)
    assert first.stopped == "time limit reached" and 0 < first.delivered < 600
    fake.state.delay_s = 0
    second = box.drain("lago")
    assert first.delivered + second.delivered == 600
    assert fake.keys == keys


def test_outage_leaves_a_backlog_that_drains_on_recovery(ledger: SQLLedger, fake: FakeBilling) -> None:
    keys = _fill(ledger, 150)
    fake.state.outage = 500
    box = Outbox(ledger, {"lago": _lago(fake)}, retry=FAST)
    down = box.drain("lago")
    fake.state.outage = None
    assert down.stopped and "gave up after 6 attempts" in down.stopped and down.delivered == 0
    (st,) = box.status()
    assert st.pending == 150 and st.last_error and "HTTP 500" in st.last_error
    assert st.oldest_pending_age_s is not None and st.oldest_pending_age_s > 0
    up = box.drain("lago")
    assert up.delivered == 150 and fake.keys == keys
    (st,) = box.status()
    assert st.pending == 0 and st.last_error is None and st.delivered == 150


def test_only_one_drainer_per_sink(ledger: SQLLedger, fake: FakeBilling) -> None:
    _fill(ledger, 3)
    a = Outbox(ledger, {"lago": _lago(fake)})
    b = Outbox(ledger, {"lago": _lago(fake)})
    assert ledger.acquire_lease("lago", a._owner, 60)
    assert b.drain("lago").stopped == "another process is draining this sink"
    ledger.release_lease("lago", a._owner)
    assert b.drain("lago").delivered == 3


def test_a_lease_left_by_a_crashed_drainer_on_this_host_is_taken_over(
    ledger: SQLLedger, fake: FakeBilling
) -> None:
    """A drainer killed mid-drain leaves its lease (up to its TTL); a drainer on the same host
    sees the holder's process is gone and takes over at once. A live holder, or one on another
    host (whose processes it cannot see), keeps the sink."""
    import os
    import subprocess
    import sys

    keys = _fill(ledger, 5)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host = os.uname().nodename
    dead = f"{host}:{int(gone.stdout)}:deadbeef"  # that process has exited
    assert ledger.acquire_lease("lago", f"other-host:{os.getpid()}:x", 60)
    box = Outbox(ledger, {"lago": _lago(fake)})
    assert box.drain("lago").stopped == "another process is draining this sink"
    ledger.release_lease("lago", f"other-host:{os.getpid()}:x")
    assert ledger.acquire_lease("lago", f"{host}:{os.getpid()}:alive", 60)  # this live process
    assert box.drain("lago").stopped == "another process is draining this sink"
    ledger.release_lease("lago", f"{host}:{os.getpid()}:alive")
    assert ledger.acquire_lease("lago", dead, 60)
    report = box.drain("lago")
    assert report.stopped is None and report.delivered == 5 and fake.keys == keys


def test_many_sinks_have_their_own_cursor(ledger: SQLLedger, fake: FakeBilling) -> None:
    _fill(ledger, 20)
    box = Outbox(ledger, {"a": _lago(fake), "b": OpenMeterSink("b", fake.url, None)}, retry=FAST)
    assert box.drain("a").delivered == 20
    assert [s.pending for s in box.status()] == [0, 20]
    _fill(ledger, 5)
    assert [r.delivered for r in box.drain_all()] == [5, 25]


def test_drain_throughput_is_reported(ledger: SQLLedger, fake: FakeBilling) -> None:
    """Not a timing assertion (see bench/bench_ledger.py): the progress callback sees it all."""
    _fill(ledger, 1200)
    seen: list[tuple[int, int]] = []
    report = Outbox(ledger, {"lago": _lago(fake)}, fetch_size=500).drain(
        "lago", progress=lambda d, n: seen.append((d, n))
    )
    assert report.delivered == 1200
    assert seen == [(500, 1200), (1000, 1200), (1200, 1200)]  # once per fetched chunk of 500


def test_a_sink_bug_is_retried_then_reported_not_raised(sqlite_only: SQLLedger) -> None:
    class Broken:
        name = "broken"
        max_batch = 10

        def prepare(self, event: object) -> list[dict[str, object]]:
            return [{"k": 1}]

        def send(self, records: object) -> None:
            raise KeyError("authentication_token")

        def close(self) -> None:
            return None

    _fill(sqlite_only, 3)
    report = Outbox(sqlite_only, {"broken": Broken()}, retry=FAST).drain("broken")
    assert report.stopped and "KeyError" in report.stopped and report.retries == FAST.max_attempts
    assert sqlite_only.sink_state("broken").position == 0  # nothing skipped


def test_replay_counts_an_event_the_sink_still_cannot_prepare(sqlite_only: SQLLedger) -> None:
    class Fussy:
        name = "fussy"
        max_batch = 10
        broken = True

        def prepare(self, event: object) -> list[dict[str, object]]:
            if self.broken:
                raise ValueError("no meter for this event")
            return [{"k": 1}]

        def send(self, records: object) -> None:
            return None

        def close(self) -> None:
            return None

    _fill(sqlite_only, 2)
    sink = Fussy()
    box = Outbox(sqlite_only, {"fussy": sink}, retry=FAST)
    assert box.drain("fussy").dead_lettered == 2
    replay = box.replay_dead_letters("fussy")  # still broken: both stay dead-lettered
    assert (replay.delivered, replay.dead_lettered) == (0, 2)
    assert len(sqlite_only.parked("fussy", "dead_letter")) == 2
    sink.broken = False
    replay = box.replay_dead_letters("fussy")
    assert (replay.delivered, replay.dead_lettered) == (2, 0)
    assert sqlite_only.parked("fussy") == []


# -- a long Retry-After under OutboxWorker ---------------------------------------------------
def test_worker_leaves_a_sink_alone_for_its_retry_after_and_keeps_draining_the_others(
    ledger: SQLLedger, fake: FakeBilling
) -> None:
    """The worker's drains are bounded (5 s here); a Retry-After of 60 s stops one at once. The
    next pass must not ask again before the minute is up, while the other sink keeps going."""
    from jevons.sinks.outbox import OutboxWorker

    keys = _fill(ledger, 10)
    fake.state.outage = 429
    fake.state.outage_headers = {"Retry-After": "60"}
    with FakeBilling() as healthy:
        box = Outbox(ledger, {"lago": _lago(fake), "om": OpenMeterSink("om", healthy.url, None)},
                     retry=FAST)
        worker = OutboxWorker(box, interval_s=0.05).start()
        try:
            time.sleep(0.6)
            more = _fill(ledger, 5)  # arrives while lago waits: om must still deliver it
            time.sleep(0.6)
        finally:
            worker.stop()
        assert {k.split("|")[1] for k in healthy.keys} == keys | more
    assert fake.state.requests == 1, f"asked {fake.state.requests} times within its Retry-After"
    assert "Retry-After 60s" in (ledger.sink_state("lago").last_error or "")
    assert ledger.sink_state("lago").position == 0  # nothing skipped
    assert worker.not_before["lago"] > time.monotonic() + 55


def test_worker_asks_again_once_the_capped_retry_after_has_passed(
    sqlite_only: SQLLedger, fake: FakeBilling
) -> None:
    """``max_retry_after_s`` caps what the worker honours, as it caps the drain's own waits."""
    from jevons.sinks.outbox import OutboxWorker

    keys = _fill(sqlite_only, 4)
    fake.state.outage = 429
    fake.state.outage_headers = {"Retry-After": "3600"}
    now = [1000.0]
    box = Outbox(sqlite_only, {"lago": _lago(fake)},
                 retry=RetryPolicy(base_s=0.001, max_s=0.01, max_attempts=6, max_retry_after_s=30))
    worker = OutboxWorker(box, interval_s=0.05, clock=lambda: now[0])
    (first,) = worker.run_once()
    assert first.retry_after_s == 30 and fake.state.requests == 1
    now[0] += 29.9
    assert worker.run_once() == [] and fake.state.requests == 1
    fake.state.outage = None
    now[0] += 0.2
    (second,) = worker.run_once()
    assert second.delivered == 4 and fake.keys == keys
    assert "lago" not in worker.not_before


def test_worker_backs_off_a_sink_that_keeps_failing_and_resets_after_a_clean_drain(
    sqlite_only: SQLLedger, fake: FakeBilling
) -> None:
    """401 (a wrong key) stops every drain: the worker waits 1, 2, 4... intervals between
    tries instead of hitting the endpoint (and the log) once per interval."""
    from jevons.sinks.outbox import OutboxWorker

    keys = _fill(sqlite_only, 3)
    fake.state.outage = 401
    now = [0.0]
    worker = OutboxWorker(Outbox(sqlite_only, {"lago": _lago(fake)}, retry=FAST), interval_s=1.0,
                          max_backoff_s=4.0, clock=lambda: now[0])
    tried_at = []
    for tick in range(16):  # one pass per interval, as the thread runs them
        now[0] = float(tick)
        if worker.run_once():
            tried_at.append(tick)
    assert tried_at == [0, 1, 3, 7, 11, 15]  # waits of 1, 2, 4, then capped at 4
    assert worker.failures["lago"] == 6
    fake.state.outage = None
    now[0] = 19.0
    (report,) = worker.run_once()
    assert report.delivered == 3 and fake.keys == keys
    assert "lago" not in worker.failures and "lago" not in worker.not_before


# -- what a status code means ---------------------------------------------------------------
@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_stops_the_drain_and_dead_letters_nothing(
    ledger: SQLLedger, fake: FakeBilling, status: int
) -> None:
    """A moved endpoint is the sink's configuration, not 50 bad events: before, 3xx was a
    per-event refusal and bisection dead-lettered the whole backlog."""
    keys = _fill(ledger, 50)
    fake.state.outage = status
    fake.state.outage_headers = {"Location": "https://new.example/api/v1/events/batch"}
    box = Outbox(ledger, {"lago": _lago(fake)}, retry=FAST)
    report = box.drain("lago")
    assert (report.delivered, report.dead_lettered) == (0, 0)
    assert report.stopped and f"HTTP {status}" in report.stopped and "redirect" in report.stopped
    assert fake.state.requests == 1  # no bisection, no retries
    assert ledger.parked_counts("lago") == {} and ledger.sink_state("lago").position == 0
    error = ledger.sink_state("lago").last_error or ""
    assert "https://new.example/" in error and "url" in error
    fake.state.outage = None  # the url fixed (here: the server back)
    assert box.drain("lago").delivered == 50 and fake.keys == keys


@pytest.mark.parametrize(("status", "outcome"), [
    (301, SinkUnavailable), (308, SinkUnavailable), (401, SinkUnavailable), (402, SinkUnavailable),
    (404, SinkUnavailable), (405, SinkUnavailable), (410, SinkUnavailable), (415, SinkUnavailable),
    (418, SinkUnavailable), (400, RejectedError), (409, RejectedError), (413, RejectedError),
    (422, RejectedError), (408, TransientError), (425, TransientError), (429, TransientError),
    (500, TransientError), (503, TransientError),
])
def test_status_classification(fake: FakeBilling, status: int, outcome: type[Exception]) -> None:
    """Only statuses about the request's content refuse events (dead letters); every other
    non-2xx that is not "try later" is about the sink itself and stops the drain."""
    fake.state.outage = status
    sink = _lago(fake)
    try:
        with pytest.raises(outcome):
            sink.send([{"transaction_id": "t1"}])
    finally:
        sink.close()


def test_a_drain_that_dead_letters_keeps_the_reason_as_last_error(
    ledger: SQLLedger, fake: FakeBilling
) -> None:
    """Before, any drain that dead-lettered something cleared ``last_error``: the 422 text was
    nowhere to be seen."""
    keys = _fill(ledger, 20)
    poisoned = sorted(keys)[3]
    fake.state.poison.add(poisoned)
    box = Outbox(ledger, {"lago": _lago(fake)}, retry=FAST)
    report = box.drain("lago")
    assert (report.delivered, report.dead_lettered) == (19, 1)
    (st,) = box.status()
    assert st.dead_lettered == 1
    assert st.last_error and "dead-lettered 1 event" in st.last_error and "HTTP 422" in st.last_error
    _fill(ledger, 2)
    assert box.drain("lago").delivered == 2  # a clean drain clears it; the list stays
    (st,) = box.status()
    assert st.last_error is None and st.dead_lettered == 1
