"""A process's append log as memory-mapped files: appends that survive ``kill -9`` without a
system call.

Why not ``write(2)``: the log is written on the caller's thread of every metered call. A
``write`` is a system call, and it releases the GIL: when the ledger's drain thread is waiting
for the GIL it takes it right there, and the caller waits for a whole drain step (measured:
p99 of the append over a millisecond inside a real SDK call). A store into a shared file
mapping (``MAP_SHARED``) is a ``memcpy`` under the GIL into the kernel's page cache: it outlives
the process exactly like a written byte does (not a power loss: that is what the database
commit and the ``sync`` mode are for).

Layout: segments ``<pid>-<random>.jnl`` of ``segment_bytes`` (a new one when a line does not
fit; grown for a longer line), each held with an exclusive ``flock`` while its process lives,
filled with newline-terminated lines from the start; the unwritten rest is zeros. A line holds
no NUL byte (JSON text), so a reader takes a segment up to its first NUL and then up to its
last newline: a line cut off by the death of its process (its append never returned) is
dropped. The newline of a single line is stored after the line itself, so a line that has its
newline is whole. Offsets are cumulative over the segments, so the drain can re-read any range
(``read``) and delete the segments it has committed (``release``).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NEW_SUFFIX", "SUFFIX", "MappedLog", "read_segment"]

SUFFIX = ".jnl"
#: a segment being created (locked, then renamed to ``SUFFIX``): never recovered, never holds a line
NEW_SUFFIX = ".jnl-new"
_NL = 10
# Linux 5.14+: fault pages in, writable and dirty, without writing to them (not in Python's
# mmap module as a name); older kernels refuse it and the first store to a page faults it
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


@dataclass(slots=True)
class _Segment:
    path: Path
    fd: int
    mm: mmap.mmap
    base: int  # cumulative offset of the segment's first byte
    size: int
    pos: int = 0

    def close(self, delete: bool) -> None:
        with contextlib.suppress(Exception):
            self.mm.close()
        if delete:
            self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.close(self.fd)  # releases the flock: a leftover segment is recovered by the next start


def read_segment(data: bytes) -> bytes:
    """The whole lines of a segment's bytes (see the module docstring)."""
    end = data.find(b"\0")
    if end >= 0:
        data = data[:end]
    return data[: data.rfind(b"\n") + 1]


class MappedLog:
    """Appends lines to memory-mapped segments in ``directory``. Not thread-safe: the store
    calls it under its own lock."""

    def __init__(self, directory: Path, segment_bytes: int = 16 << 20) -> None:
        self.directory = directory
        self.segment_bytes = max(segment_bytes, mmap.PAGESIZE)
        self._no_populate = False
        self._segments: list[_Segment] = []
        # the last of the segments, appended to. ``JournaledStore.append_capture`` writes a
        # line that fits into it itself, as ``append_line`` does (a frame fewer on every
        # metered call); a line that does not fit goes to ``append_line``, which rolls over
        self.current = self._open(self.segment_bytes)

    @property
    def written(self) -> int:
        """Cumulative bytes appended (the end of the current segment's lines)."""
        seg = self._segments[-1] if self._segments else None
        return 0 if seg is None else seg.base + seg.pos

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self._segments]

    def _open(self, size: int) -> _Segment:
        """A new segment, locked before it is visible under its ``.jnl`` name: created under
        a name recoverers do not look at, locked, then renamed (the lock belongs to the open
        file, not the name). Created under its final name, another process's recovery could
        lock it in the moment before its owner does, find it empty and delete it, and the
        owner's acknowledged appends would then go to a deleted file."""
        size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        stem = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        path = self.directory / f"{stem}{SUFFIX}"
        hidden = self.directory / f"{stem}{NEW_SUFFIX}"
        fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            os.rename(hidden, path)
        except BaseException:
            os.close(fd)
            hidden.unlink(missing_ok=True)
            raise
        segment = _Segment(path, fd, mm, self.written, size)
        self._segments.append(segment)
        self.current = segment
        return segment

    def append_line(self, line: bytes) -> None:
        """Store ``line`` and its newline (``len(line) + 1`` bytes), in a new segment when it
        does not fit in the current one. (A metered call's capture line that fits is written
        by ``JournaledStore.append_capture`` itself, the same way.)"""
        seg = self.current
        p = seg.pos
        end = p + len(line)
        if end >= seg.size:
            seg = self._open(max(self.segment_bytes, len(line) + 1))
            p, end = 0, len(line)
        mm = seg.mm
        mm[p:end] = line
        mm[end] = _NL  # after the line: a line with its newline is whole
        seg.pos = end + 1

    def append_block(self, block: bytes) -> int:
        """Store ``block`` (whole newline-terminated lines) in one copy."""
        n = len(block)
        seg = self._segments[-1]
        p = seg.pos
        if p + n > seg.size:
            seg = self._open(max(self.segment_bytes, n))
            p = 0
        seg.mm[p : p + n] = block
        seg.pos = p + n
        return n

    def prefault(self, ahead: int = 1 << 18) -> None:
        """Fault in the ``ahead`` bytes after the write position, from the drain thread, so
        that the appends on the callers' threads do not each pay a page fault (one in every
        eight appends otherwise; the fault of a new page of a file mapping costs tens of
        microseconds on a VM). Does not touch the contents: safe beside a running append."""
        try:
            seg = self._segments[-1]
            start = seg.pos // mmap.PAGESIZE * mmap.PAGESIZE
            length = min(ahead, seg.size - start)
            if length > 0 and not self._no_populate:
                seg.mm.madvise(_MADV_POPULATE_WRITE, start, length)
        except OSError:
            self._no_populate = True  # the kernel does not know it: appends fault as usual
        except (IndexError, ValueError):
            pass  # closed meanwhile

    def read(self, start: int, end: int) -> bytes:
        """The bytes between the cumulative offsets ``start`` and ``end`` (whole lines when
        both are line boundaries; a segment's unused tail is skipped)."""
        parts: list[bytes] = []
        for seg in self._segments:
            lo = max(start, seg.base)
            hi = min(end, seg.base + seg.pos)
            if lo < hi:
                parts.append(seg.mm[lo - seg.base : hi - seg.base])
        return b"".join(parts)

    def release(self, drained: int) -> None:
        """Delete the segments (not the current one) whose lines are all committed."""
        while len(self._segments) > 1 and self._segments[0].base + self._segments[0].pos <= drained:
            self._segments.pop(0).close(delete=True)

    def close(self, delete: bool) -> None:
        for seg in self._segments:
            seg.close(delete)
        self._segments = []

    def abandon(self) -> None:
        """After ``fork``, in the child: drop the parent's segments without touching them
        (unmapping is per process; closing the child's descriptors keeps the parent's locks)."""
        for seg in self._segments:
            with contextlib.suppress(Exception):
                seg.mm.close()
            with contextlib.suppress(OSError):
                os.close(seg.fd)
        self._segments = []
