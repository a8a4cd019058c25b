"""The memory-mapped append log: whole lines only, across segments, and what a reader makes
of a segment whose process died mid-append."""

from __future__ import annotations

from pathlib import Path

from jevons.ledger.database import SQLLedger, sqlite_ledger
from jevons.ledger.journal import JournaledStore, recover_journals
from jevons.ledger.maplog import MappedLog, read_segment
from ledger.helpers import make_event


def test_lines_roll_over_segments_and_read_back_whole(tmp_path: Path) -> None:
    log = MappedLog(tmp_path, segment_bytes=4096)
    lines = [f'["line",{i},"{"x" * (i % 300)}"]'.encode() for i in range(300)]
    for line in lines:
        before = log.written
        log.append_line(line)
        assert log.written == before + len(line) + 1
    assert len(log.paths) > 3  # several segments
    assert log.read(0, log.written) == b"".join(x + b"\n" for x in lines)
    # a range in the middle, across a segment boundary
    start = sum(len(x) + 1 for x in lines[:10])
    end = sum(len(x) + 1 for x in lines[:60])
    assert log.read(start, end) == b"".join(x + b"\n" for x in lines[10:60])
    # a line longer than a segment gets a segment of its own
    big = b'"' + b"y" * 10_000 + b'"'
    log.append_line(big)
    assert log.read(log.written - len(big) - 1, log.written) == big + b"\n"
    # committed segments are deleted, the current one never
    paths = log.paths
    log.release(sum(len(x) + 1 for x in lines[:200]))
    assert not paths[0].exists() and log.paths[-1].exists()
    log.release(log.written)
    assert log.paths == [paths[-1]]
    log.close(delete=True)
    assert not list(tmp_path.glob("*.jnl"))


def test_a_segment_is_read_up_to_its_last_whole_line() -> None:
    whole = b'["a"]\n["b"]\n'
    assert read_segment(whole + b"\0" * 100) == whole
    assert read_segment(whole + b'["c' + b"\0" * 100) == whole  # cut off by the process's death
    assert read_segment(whole + b'["c' + b"\0" + b'x"]\n' + b"\0" * 10) == whole  # a hole: torn
    assert read_segment(b"") == b""


def test_blocks_and_prefault(tmp_path: Path) -> None:
    log = MappedLog(tmp_path, segment_bytes=8192)
    log.prefault()  # harmless beside appends, and on a kernel without MADV_POPULATE_WRITE
    block = b"".join(f'["b",{i}]\n'.encode() for i in range(2000))
    log.append_block(block)
    log.append_line(b'["after"]')
    assert log.read(0, log.written) == block + b'["after"]\n'
    log.close(delete=False)
    kept = list(tmp_path.glob("*.jnl"))
    assert kept and b'["after"]' in b"".join(read_segment(p.read_bytes()) for p in kept)


def test_a_dead_process_mapped_log_is_recovered(ledger: SQLLedger, tmp_path: Path) -> None:
    from jevons.ledger.codec import encode_event

    journal = tmp_path / "journal"
    journal.mkdir()
    log = MappedLog(journal, segment_bytes=4096)
    events = [make_event(i) for i in range(20)]
    for e in events:
        log.append_line(encode_event(e))
    # the process dies: its descriptors close (the lock goes), its pages stay in the file
    log.abandon()
    assert recover_journals(ledger, journal) == 20
    assert {e.id for e in ledger.query()} == {e.id for e in events}
    assert not list(journal.glob("*.jnl"))


def test_captures_are_refused_when_they_cannot_be_deferred(ledger: SQLLedger, tmp_path: Path) -> None:
    built: list[int] = []

    def complete(item: int) -> object:
        built.append(item)
        return make_event(item)

    sync = JournaledStore(sqlite_ledger(tmp_path / "sync.db"), tmp_path / "j", durability="sync")
    assert sync.append_capture(b'["C1"]', 1, complete) is False  # sync: built by the caller
    sync.close()
    store = JournaledStore(ledger, tmp_path / "j2", flush_interval_ms=60_000)
    store._spilled = True  # the database is behind: rows are read back from the log
    assert store.append_capture(b'["C1"]', 2, complete) is False
    store._spilled = False
    store._carry_bytes = store._row_cap_bytes + 1  # a failed commit holds more than allowed
    assert store.append_capture(b'["C1"]', 3, complete) is False
    store._carry_bytes = 0
    store.takes_captures = False
    assert store.append_capture(b'["C1"]', 4, complete) is False
    store.takes_captures = True
    assert store.append_capture(b'["C1"]', 5, complete) is True  # type: ignore[arg-type]
    assert store.flush(timeout=30)
    assert built == [5] and ledger.count() == 1
    assert store.stats()["appended"] == 1
    store.close()
    assert store.append_capture(b'["C1"]', 6, complete) is False  # closed


def test_captures_roll_over_segments_like_any_line(ledger: SQLLedger, tmp_path: Path) -> None:
    """Across segment boundaries, and for a line longer than a segment, the log holds every
    capture line whole and in order, as after a ``kill -9`` right then, and the store counts
    the same bytes the log holds."""
    store = JournaledStore(ledger, tmp_path / "j", rotate_bytes=4096, flush_interval_ms=60_000)
    events = [make_event(i) for i in range(200)]
    lines = [f'["C1",{i},"{"x" * (i % 300)}"]'.encode() for i in range(200)]
    lines[150] = b'["C1","' + b"y" * 10_000 + b'"]'  # longer than a segment
    for line, event in zip(lines, events, strict=True):
        assert store.append_capture(line, event, lambda e: e) is True
    log = store._log
    assert log is not None and len(log.paths) > 5
    on_disk = b"".join(read_segment(p.read_bytes()) for p in log.paths)
    assert on_disk == b"".join(x + b"\n" for x in lines)
    assert log.written == store._written == len(on_disk)
    assert store.flush(timeout=30)
    assert ledger.count() == 200
    store.close()
