"""The hot-path store: per-process append log, background group commit, crash recovery."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from jevons.ledger import EventQuery, open_store
from jevons.ledger.codec import encode_event
from jevons.ledger.database import LedgerError, SQLLedger, sqlite_ledger
from jevons.ledger.journal import JournaledStore

from .helpers import Outage, drop_schema, make_event, settings_for, unique_schema

REPO = Path(__file__).resolve().parents[2]


def _store(ledger: SQLLedger, tmp_path: Path, **kw: object) -> JournaledStore:
    return JournaledStore(ledger, tmp_path / "journal", **kw)  # type: ignore[arg-type]


def test_open_store_defaults_to_sqlite_in_jevons_home(_isolated_home: Path) -> None:
    from jevons.config import load_settings

    tmp_path = _isolated_home
    store = open_store(load_settings())
    try:
        assert isinstance(store, JournaledStore)
        assert store.append(make_event(1, key="a")) is True
        assert store.append(make_event(2, key="a")) is False
        assert [e.idempotency_key for e in store.query()] == ["a"]
    finally:
        store.close()
    assert (tmp_path / "ledger" / "ledger.db").is_file()
    assert not list((tmp_path / "ledger" / "journal").rglob("*.jnl")), "a clean close leaves no log"


def test_open_store_memory_backend(tmp_path: Path) -> None:
    from jevons.ledger import MemoryStore

    assert isinstance(open_store(settings_for("memory", home=str(tmp_path))), MemoryStore)


def test_a_database_down_at_start_up_loses_nothing(tmp_path: Path) -> None:
    """The ledger cannot be opened when the store starts (here: its path is taken by a
    directory): the store still starts, on its append log; the events are on disk at once and
    in the database as soon as it can be opened. Before, ``Meter()`` fell back to memory."""
    from jevons.ledger.deferred import DeferredLedger

    settings = settings_for("sqlite", home=str(tmp_path), flush_interval_ms=1)
    db = tmp_path / "ledger" / "ledger.db"
    db.mkdir(parents=True)  # not a database: opening it fails
    store = open_store(settings)
    assert isinstance(store, JournaledStore) and isinstance(store.ledger, DeferredLedger)
    for i in range(5):
        assert store.append(make_event(i, key=f"k{i}"))
    assert not store.flush(timeout=0.5)
    logged = b"".join(p.read_bytes() for p in store.directory.glob("*.jnl"))
    assert all(f"k{i}".encode() in logged for i in range(5))
    started = time.monotonic()
    with pytest.raises(LedgerError):  # at once: no flush can happen while it is down
        store.query()
    assert time.monotonic() - started < 5
    assert isinstance(store._reopen(), DeferredLedger)  # type: ignore[misc]  # a forked child, too
    db.rmdir()  # the database can be opened now
    assert store.flush(timeout=30)
    assert sorted(e.idempotency_key for e in store.query()) == [f"k{i}" for i in range(5)]
    store.close()


def test_append_survives_until_drained_and_query_sees_it(ledger: SQLLedger, tmp_path: Path) -> None:
    store = _store(ledger, tmp_path, flush_interval_ms=1000)
    events = [make_event(i) for i in range(200)]
    for e in events:
        assert store.append(e)
    # the log holds every line before the background commit happened
    (log,) = (tmp_path / "journal").glob("*.jnl")
    assert log.read_bytes().count(b"\n") == 200
    assert len(store.query(EventQuery(customer="cust_1"))) == 200  # query flushes first
    assert store.stats()["stored"] == 200
    store.close()


def test_duplicates_across_stores_are_stored_once(ledger: SQLLedger, tmp_path: Path) -> None:
    a = _store(ledger, tmp_path)
    b = JournaledStore(ledger, tmp_path / "journal-b")
    e = make_event(1, key="shared")
    assert a.append(e) and b.append(e)  # neither process can see the other's key...
    a.flush()
    b.flush()
    assert ledger.count() == 1  # ...but the database's unique key keeps one
    assert a.stats()["db_duplicates"] + b.stats()["db_duplicates"] == 1
    b._stop.set()
    a.close()


def test_append_many_and_modes(tmp_path: Path) -> None:
    for mode in ("strict", "sync", "fast"):
        led = sqlite_ledger(tmp_path / f"{mode}.db")
        store = JournaledStore(led, tmp_path / f"j-{mode}", durability=mode)  # type: ignore[arg-type]
        events = [make_event(i) for i in range(100)]
        assert store.append_many([*events, events[0]]) == 100
        if mode == "sync":
            assert led.count() == 100  # sync: committed before append_many returned
        assert store.append(events[5]) is False
        store.flush()
        assert led.count() == 100
        store.close()


def test_append_many_in_slices_keeps_order_and_dedupes_across_slices(tmp_path: Path) -> None:
    """append_many encodes in slices (handing the GIL to the drain between them): a key
    repeated in a later slice is still a duplicate, a generator is taken whole, and the log
    holds the events in the order given."""
    from jevons.ledger import journal

    store = _store(sqlite_ledger(tmp_path / "s.db"), tmp_path)
    n = journal._YIELD_EVERY * 2 + 50
    events = [make_event(i, key=f"k{i}") for i in range(n)]
    repeats = events[:20]  # land in the third slice
    assert store.append_many(e for e in [*events, *repeats]) == n
    assert store.stats()["duplicates"] == 20
    assert store.flush()
    stored = store.query()
    assert [e.idempotency_key for e in stored] == [f"k{i}" for i in range(n)]
    store.close()


def test_recovers_an_orphaned_log_and_quarantines_garbage(tmp_path: Path) -> None:
    settings = settings_for("sqlite", home=str(tmp_path))
    first = open_store(settings)
    journal = first.directory  # type: ignore[attr-defined]
    first.close()
    events = [make_event(i) for i in range(10)]
    body = b"".join(encode_event(e) + b"\n" for e in events)
    (journal / "4242-deadbeef.jnl").write_bytes(
        body + b"{not json}\n" + encode_event(make_event(77))[:40]  # garbage, then a torn line
    )
    store = open_store(settings)
    try:
        assert store.stats()["recovered"] == 10  # type: ignore[attr-defined]
        assert {e.id for e in store.query()} == {e.id for e in events}
        assert not (journal / "4242-deadbeef.jnl").exists()
        assert b"{not json}" in (journal / "quarantine.jsonl").read_bytes()
    finally:
        store.close()


def test_a_live_log_is_not_taken_by_another_store(tmp_path: Path) -> None:
    settings = settings_for("sqlite", home=str(tmp_path), flush_interval_ms=60000)
    a = open_store(settings)
    a.append(make_event(1))
    b = open_store(settings)
    assert b.stats()["recovered"] == 0  # type: ignore[attr-defined]
    assert len(list(a.directory.glob("*.jnl"))) == 2  # type: ignore[attr-defined]
    b.close()
    a.close()


def test_database_outage_keeps_events_in_the_log(ledger: SQLLedger, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = ledger.insert_rows
    calls = {"n": 0}

    def flaky(rows):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] <= 3:
            raise RuntimeError("database is down")
        return real(rows)

    monkeypatch.setattr(ledger, "insert_rows", flaky)
    store = _store(ledger, tmp_path, flush_interval_ms=1)
    for i in range(20):
        assert store.append(make_event(i))
    assert store.flush(timeout=30)
    assert store.stats()["drain_errors"] >= 3
    assert ledger.count() == 20
    store.close()


def test_a_new_segment_is_never_taken_by_another_process_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process's recovery runs at the worst moment: while this store creates a segment
    (file created, lock not yet taken). The segment must survive, with every acknowledged line
    on disk, as after a ``kill -9`` right then."""
    import fcntl

    import jevons.ledger.maplog as maplog
    from jevons.ledger.journal import recover_journals
    from jevons.ledger.maplog import read_segment

    ledger = sqlite_ledger(tmp_path / "l.db")
    other_process = sqlite_ledger(tmp_path / "l.db")
    journal = tmp_path / "journal"
    armed = {"now": False}
    real_flock = fcntl.flock

    class Fcntl:
        LOCK_EX, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

        @staticmethod
        def flock(fd: int, op: int) -> None:
            if armed["now"] and op == fcntl.LOCK_EX:  # a new segment, not locked yet
                armed["now"] = False
                recover_journals(other_process, journal)
            real_flock(fd, op)

    monkeypatch.setattr(maplog, "fcntl", Fcntl)
    store = _store(ledger, tmp_path, rotate_bytes=64 * 1024, flush_interval_ms=60_000)
    Outage(ledger, monkeypatch)  # nothing commits: the log is the only copy
    for i in range(400):
        armed["now"] = armed["now"] or i == 200
        assert store.append(make_event(i, key=f"k{i}"))
    assert not armed["now"], "the bench never rotated: the race was not exercised"
    lines = [line for path in journal.glob("*.jnl")
             for line in read_segment(path.read_bytes()).splitlines()]
    assert len(lines) == 400
    assert other_process.count() == 0  # it took nothing
    other_process.close()
    store.close()


def test_recovery_removes_only_stale_half_created_segments(tmp_path: Path) -> None:
    from jevons.ledger.journal import recover_journals

    journal = tmp_path / "journal"
    journal.mkdir()
    stale, fresh = journal / "1-aaaa.jnl-new", journal / "2-bbbb.jnl-new"
    stale.write_bytes(b"")
    fresh.write_bytes(b"")
    os.utime(stale, (0, 0))  # its process died while creating it, long ago
    ledger = sqlite_ledger(tmp_path / "l.db")
    assert recover_journals(ledger, journal) == 0
    assert (stale.exists(), fresh.exists()) == (False, True)
    ledger.close()


def test_log_rotation_loses_nothing(ledger: SQLLedger, tmp_path: Path) -> None:
    store = _store(ledger, tmp_path, rotate_bytes=20_000, flush_interval_ms=1)
    for i in range(300):
        store.append(make_event(i))
        if i % 50 == 0:
            store.flush()
    store.flush()
    assert ledger.count() == 300
    assert len(list((tmp_path / "journal").glob("*.jnl"))) == 1
    store.close()


def test_16_threads_and_200_tasks_record_at_once(ledger: SQLLedger, tmp_path: Path) -> None:
    store = _store(ledger, tmp_path)
    per_thread = 150
    barrier = threading.Barrier(16)
    failures: list[BaseException] = []  # an assert in a thread does not fail the test by itself

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                assert store.append(make_event(i, key=f"t{t}-{i}"))
                if i % 10 == 0:  # and retries of the same key
                    assert not store.append(make_event(i, key=f"t{t}-{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not failures, failures

    async def task(n: int) -> None:
        for i in range(5):
            await asyncio.sleep(0)
            assert store.append(make_event(i, key=f"a{n}-{i}", customer=f"c{n % 7}"))

    async def main() -> None:
        await asyncio.gather(*(task(n) for n in range(200)))

    asyncio.run(main())
    store.flush()
    assert ledger.count() == 16 * per_thread + 200 * 5
    keys = [e.idempotency_key for e in ledger.query()]
    assert len(keys) == len(set(keys))
    store.close()


_WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from ledger.helpers import make_event, settings_for
    from jevons.ledger import open_store
    name, n = sys.argv[1], int(sys.argv[2])
    store = open_store(settings_for("postgres", home=sys.argv[3], dsn=sys.argv[4], schema=sys.argv[5]))
    for i in range(n):
        store.append(make_event(i, key=f"{{name}}-{{i}}", customer=name))
        store.append(make_event(i, key=f"shared-{{i}}", customer="shared"))
    store.close()
    print("done", flush=True)
    """
)


@pytest.mark.postgres
def test_two_processes_share_one_postgres_ledger(pg_dsn: str, tmp_path: Path) -> None:
    schema = unique_schema()
    script = _WRITER.format(tests=str(REPO / "tests"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, name, "400", str(tmp_path / name), pg_dsn, schema],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for name in ("p1", "p2")
        ]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        from jevons.ledger.database import postgres_ledger

        led = postgres_ledger(pg_dsn, schema=schema)
        try:
            assert led.count(EventQuery(customer="p1")) == 400
            assert led.count(EventQuery(customer="p2")) == 400
            assert led.count(EventQuery(customer="shared")) == 400  # both wrote them; one each
            seqs = [s for s, _ in led.events_after(0, 10_000)]
            assert seqs == sorted(seqs) and len(seqs) == 1200
        finally:
            led.close()
    finally:
        drop_schema(pg_dsn, schema)


def test_a_forked_child_gets_its_own_log_and_connections(
    backend: str, dsn_for: str | None, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """gunicorn --preload and multiprocessing fork a process that already opened the store."""
    schema = request.getfixturevalue("pg_run_schema") if backend == "postgres" else None
    settings = settings_for(backend, home=str(tmp_path), dsn=dsn_for, schema=schema,
                            table_prefix=f"fork{os.getpid()}_")
    store = open_store(settings)
    assert store.append(make_event(0, key="parent-0"))
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            ok = all(store.append(make_event(i, key=f"child-{i}")) for i in range(20))
            store.close()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    assert store.append(make_event(1, key="parent-1"))
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    keys = {e.idempotency_key for e in store.query()}
    assert keys == {"parent-0", "parent-1"} | {f"child-{i}" for i in range(20)}
    store.close()


def test_sync_mode_never_hangs_on_a_dead_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jevons.ledger.database import LedgerError

    led = sqlite_ledger(tmp_path / "l.db")
    outage = Outage(led, monkeypatch)
    store = JournaledStore(led, tmp_path / "j", durability="sync", flush_interval_ms=1)
    store.sync_timeout_s = 0.3
    with pytest.raises(LedgerError, match="kept in the append log"):
        store.append(make_event(1, key="during-outage"))
    outage.down = False
    assert store.flush(timeout=30)
    assert [e.idempotency_key for e in led.query()] == ["during-outage"]
    store.close()


def _busy_caller_step() -> None:
    """What a busy caller thread does between two appends: Python work, with one short
    release of the GIL (``os.urandom``, as ``uuid4()`` in every request of the OpenAI SDK)."""
    os.urandom(16)
    x = 0
    for i in range(10_000):
        x = (x * 31 + i) % 1_000_003


@pytest.mark.parametrize("path", ["append", "append_capture"])
def test_a_busy_caller_lends_the_gil_to_a_starved_drain(tmp_path: Path, path: str) -> None:
    """Every short release of the GIL by the running thread restarts a waiting thread's wait
    for it, so a caller like this one keeps the drain from running: measured, with metered
    OpenAI calls, none of thousands of captures was built or committed for as long as the
    calls went on. Past ``lend_bytes`` waiting in memory, an append waits (briefly,
    rate-limited) for the drain instead. ``append_capture`` (a metered call, whose event the
    drain builds) and ``append`` (a built event) both lend."""
    # the drain's own timer set to an hour: it runs only when lent, whatever else the machine
    # runs (left to its 5 ms timer, it got in through the scheduler's preemptions when other
    # processes kept both CPUs busy, and 0-1 lends were counted: session 13)
    store = _store(sqlite_ledger(tmp_path / "l.db"), tmp_path, lend_bytes=16 << 10,
                   flush_interval_ms=3_600_000)
    store._lend_every_s = 0.1
    try:
        appended = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            _busy_caller_step()
            event = make_event(appended)
            if path == "append":
                assert store.append(event)
            else:
                assert store.append_capture(encode_event(event), event, lambda e: e)
            appended += 1
        stats = store.stats()
        assert appended > 200
        assert stats["lends"] >= 2
        # with the lend ~95% were committed before the loop ended; without it 0-35% (measured)
        assert stats["stored"] >= appended * 4 // 5, (stats, appended)
        assert store.flush(timeout=30)
        assert store.ledger.count() == appended
    finally:
        store.close()


def test_no_caller_waits_on_a_drain_whose_database_is_failing(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The lend is for a drain starved of the GIL, not one held up by the database: with the
    database down, appends never wait, however much is waiting in memory."""
    ledger = sqlite_ledger(tmp_path / "l.db")

    def down(rows):  # type: ignore[no-untyped-def]
        raise RuntimeError("database is down")

    monkeypatch.setattr(ledger, "insert_rows", down)
    store = _store(ledger, tmp_path, flush_interval_ms=1, lend_bytes=1)
    store._lend_every_s = 0.0
    try:
        store.append(make_event(0))
        deadline = time.monotonic() + 10
        while store.last_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.last_error is not None
        lends = store.stats()["lends"]
        t = time.monotonic()
        for i in range(1, 201):
            assert store.append(make_event(i))
        assert time.monotonic() - t < 0.5  # not 200 waits of 50 ms
        assert store.stats()["lends"] == lends
    finally:
        monkeypatch.undo()
        store.close()
    assert sqlite_ledger(tmp_path / "l.db").count() == 201


def test_the_drain_thread_never_waits_for_itself(tmp_path: Path) -> None:
    """A sink that records an event runs on the drain thread: its append must not lend the
    GIL to the thread it is on (it would wait its whole 50 ms for nothing)."""
    store = _store(sqlite_ledger(tmp_path / "l.db"), tmp_path, lend_bytes=1)
    store._lend_every_s = 0.0
    took: list[float] = []

    def complete_and_record(event):  # type: ignore[no-untyped-def]
        t = time.monotonic()
        store.append(make_event(1000 + event.usage.input_tokens, key=f"from-sink-{event.id}"))
        took.append(time.monotonic() - t)
        return event

    try:
        for i in range(5):
            event = make_event(i)
            assert store.append_capture(encode_event(event), event, complete_and_record)
        assert store.flush(timeout=30)
        assert len(took) == 5
        assert max(took) < 0.04, took
        assert store.ledger.count() == 10
    finally:
        store.close()


def test_a_failed_lend_still_reports_the_written_capture_taken(tmp_path: Path) -> None:
    """The lend runs after the line is written: if it failed and ``append_capture`` said
    False, the caller would record the call again (counted twice)."""
    store = _store(sqlite_ledger(tmp_path / "l.db"), tmp_path, lend_bytes=1)
    store._lend_every_s = 0.0

    def broken_wait(target: int, timeout: float | None) -> bool:
        raise RuntimeError("lend failed")

    store._wait_drained = broken_wait  # type: ignore[method-assign]
    try:
        for i in range(3):
            event = make_event(i)
            assert store.append_capture(encode_event(event), event, lambda e: e)
        assert store.stats()["lends"] == 3
        del store._wait_drained  # the instance's own again, for flush
        assert store.flush(timeout=30)
        assert store.ledger.count() == 3
    finally:
        store.close()
