"""The on-disk price cache in ``JEVONS_HOME/prices``: live versions, HTTP validators, state.

Files (each written atomically: temp file + rename, so a reader never sees half a file):

- ``live.json.gz`` — every live (fetched) version ever applied, with its validity interval;
- ``http.json`` + ``http/<hash>.gz`` — ETag / Last-Modified and the last body of each URL, for
  conditional requests (a ``304`` re-reads the stored body);
- ``state.json`` — last attempt, last success and last error of each source;
- ``quarantine.json`` — fetched prices held back by the guard until ``jevons prices accept``;
- ``diff.json`` — what the last refresh changed (``jevons prices diff``).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jevons.prices.model import Layer, PriceVersion
from jevons.prices.snapshot import dump_versions, load_versions

__all__ = ["HttpEntry", "PriceStore"]

HttpEntry = dict[str, Any]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class PriceStore:
    """Read and write the price cache of one ``JEVONS_HOME``."""

    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "prices"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock for a read-modify-write of the cache (two processes refreshing at
        once apply their changes one after the other, never over each other)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # ---------------------------------------------------------------- json helpers
    def _read_json(self, name: str, default: Any) -> Any:
        try:
            return json.loads((self.root / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return default
        except (ValueError, OSError):
            return default  # a damaged cache file is as good as none; it is rewritten next time

    def _write_json(self, name: str, data: Any) -> None:
        _atomic_write(self.root / name, json.dumps(data, indent=1, sort_keys=True).encode())

    # ---------------------------------------------------------------- live versions
    def load_live(self) -> list[PriceVersion]:
        try:
            blob = (self.root / "live.json.gz").read_bytes()
        except FileNotFoundError:
            return []
        try:
            versions, _ = load_versions(blob, layer=Layer.LIVE)
        except (ValueError, OSError, KeyError, EOFError):
            return []
        return versions

    def save_live(self, versions: list[PriceVersion]) -> None:
        _atomic_write(self.root / "live.json.gz", dump_versions(versions))

    # ---------------------------------------------------------------- http cache
    def http_entry(self, url: str) -> HttpEntry | None:
        entry = self._read_json("http.json", {}).get(url)
        return entry if isinstance(entry, dict) else None

    def http_body(self, url: str) -> bytes | None:
        try:
            return gzip.decompress((self.root / "http" / self._body_name(url)).read_bytes())
        except (FileNotFoundError, OSError, EOFError):
            return None

    def save_http(self, url: str, body: bytes, etag: str | None, last_modified: str | None) -> None:
        _atomic_write(self.root / "http" / self._body_name(url), gzip.compress(body, mtime=0))
        index = self._read_json("http.json", {})
        index[url] = {"etag": etag, "last_modified": last_modified, "saved_at": _now()}
        self._write_json("http.json", index)

    @staticmethod
    def _body_name(url: str) -> str:
        return hashlib.sha256(url.encode()).hexdigest()[:24] + ".gz"

    # ---------------------------------------------------------------- state, diff, quarantine
    def state(self) -> dict[str, Any]:
        data = self._read_json("state.json", {})
        return data if isinstance(data, dict) else {}

    def save_state(self, state: dict[str, Any]) -> None:
        self._write_json("state.json", state)

    def quarantine(self) -> list[dict[str, Any]]:
        data = self._read_json("quarantine.json", [])
        return data if isinstance(data, list) else []

    def save_quarantine(self, items: list[dict[str, Any]]) -> None:
        self._write_json("quarantine.json", items)

    def diff(self) -> dict[str, Any]:
        data = self._read_json("diff.json", {})
        return data if isinstance(data, dict) else {}

    def save_diff(self, diff: dict[str, Any]) -> None:
        self._write_json("diff.json", diff)


def _now() -> str:
    return datetime.now(UTC).isoformat()
