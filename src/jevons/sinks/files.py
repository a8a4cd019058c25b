"""The JSONL file sink and the signed HTTP webhook sink.

JSONL: each event's ``to_dict()`` JSON on its own line, appended, the file ``fsync``-ed once
per batch before the batch counts as delivered. A crash between the fsync and the cursor
commit repeats the batch: readers deduplicate on ``idempotency_key``, as with every sink.

Webhook: ``POST`` of ``{"events": [...to_dict()...]}`` with
``X-Jevons-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` keyed by the
secret named in ``secret_env``, so the receiver can check origin and freshness; receivers
deduplicate on each event's ``idempotency_key``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from jevons.events import Event
from jevons.sinks.base import Hold, HttpSink, Record

__all__ = ["JsonlSink", "WebhookSink", "sign", "verify"]

SIGNATURE_HEADER = "X-Jevons-Signature"


class JsonlSink:
    kind = "jsonl"
    max_batch = 1000
    concurrency = 1  # one writer keeps the file in ledger order

    def __init__(self, name: str, path: Path, *, batch_size: int = 1000) -> None:
        self.name = name
        self.path = path
        self.max_batch = max(1, batch_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def prepare(self, event: Event) -> list[Record] | Hold:
        return [event.to_dict()]

    def send(self, records: Sequence[Record]) -> None:
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        return None


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, *, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """Check a ``X-Jevons-Signature`` header (for receivers and tests)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, ts), header)


class WebhookSink(HttpSink):
    kind = "webhook"
    max_batch = 100

    def __init__(self, name: str, url: str, secret: str | None, *, timeout: float = 10.0,
                 batch_size: int = 100) -> None:
        super().__init__(name, url, timeout=timeout, headers={"Content-Type": "application/json"})
        self.url = url  # exactly as configured: a trailing slash is part of a receiver's route
        if not secret:
            raise ValueError(f"sink {name}: the webhook needs a signing secret (secret_env)")
        self._secret = secret.encode()
        self.max_batch = max(1, batch_size)

    def prepare(self, event: Event) -> list[Record] | Hold:
        return [event.to_dict()]

    def send(self, records: Sequence[Record]) -> None:
        body = json.dumps({"events": list(records)}, separators=(",", ":")).encode()
        header = sign(self._secret, body, int(time.time()))
        self._post(self.url, content=body, headers={SIGNATURE_HEADER: header})
