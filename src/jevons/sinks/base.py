"""What a billing sink is, and how an HTTP answer maps onto the outbox's decisions.

A sink turns one ledger event into zero or more wire records (``prepare``), and sends a batch
of records (``send``). It never retries by itself: the outbox owns retries, backoff, cursors
and the dead-letter list. ``send`` raises:

- ``TransientError`` (5xx, 429, 408, 425, timeouts, connection errors; ``retry_after`` when
  the server said ``Retry-After``): the batch is retried later, nothing is skipped;
- ``RejectedError`` (400/409/413/422 only, the statuses that are about the request's content):
  the server refused something in the batch for good; ``indexes`` names the refused records
  when the server said which, else the outbox bisects the batch to find them; a refused event
  goes to the dead-letter list (413: bisection finds the event too large to send alone);
- ``SinkUnavailable`` (every other status: 3xx, 401/403/404/405 and the rest of 4xx, bad
  configuration): nothing in the batch is at fault; the drain stops with the error recorded,
  the backlog stays. A redirect is one of these: a moved endpoint is the config's ``url`` to
  fix, and a redirected POST is not safe to follow blindly. Dead-lettering is a verdict on an
  event, so only a status that is one may produce it: an unknown status stops the drain, which
  loses nothing, instead of emptying the backlog into the dead-letter list.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from jevons.events import Event

__all__ = [
    "REJECTING_STATUSES",
    "TRANSIENT_STATUSES",
    "Hold",
    "HttpSink",
    "RejectedError",
    "Sink",
    "SinkError",
    "SinkUnavailable",
    "TransientError",
    "kind_of",
    "parse_retry_after",
    "rfc3339",
]

Record = dict[str, Any]

#: answers that say "later": the batch is retried (with ``Retry-After`` when given)
TRANSIENT_STATUSES = frozenset({408, 425, 429})
#: answers about the request's content: the refused events are dead-lettered
REJECTING_STATUSES = frozenset({400, 409, 413, 422})


@dataclass(frozen=True, slots=True)
class Hold:
    """``prepare``'s answer for an event the sink cannot send yet (or at all)."""

    reason: str  # "waiting_for_price" or "unattributed"
    detail: str


class SinkError(Exception):
    pass


class TransientError(SinkError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RejectedError(SinkError):
    """``indexes``: refused records (index in the batch -> reason), ``None`` when unknown;
    ``already``: records the server refused only because it already holds them (delivered)."""

    def __init__(self, message: str, indexes: Mapping[int, str] | None = None,
                 already: set[int] | None = None) -> None:
        super().__init__(message)
        self.indexes = dict(indexes) if indexes is not None else None
        self.already = set(already or ())


class SinkUnavailable(SinkError):
    pass


class Sink(Protocol):
    """Also read when present: ``concurrency`` (requests in flight at once, default the
    outbox's; 1 keeps delivery in ledger order), and ``kind`` (the ``[sinks.<name>] type`` it
    is built from, shown by ``outbox status``; default: the class name, see ``kind_of``)."""

    name: str
    max_batch: int  # wire records per request

    def prepare(self, event: Event) -> list[Record] | Hold: ...

    def send(self, records: Sequence[Record]) -> None: ...

    def close(self) -> None: ...


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def rfc3339(ts: datetime) -> str:
    """An event time as the RFC 3339 UTC text billing APIs want (``...Z``); naive times are
    taken as UTC, as the ledger takes them."""
    utc = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return utc.isoformat().replace("+00:00", "Z")


def kind_of(sink: object) -> str:
    """A sink's kind as ``outbox status`` shows it: its ``kind`` (the config ``type`` of the
    built-in sinks), else its class name without ``Sink``, lower case."""
    kind = getattr(sink, "kind", None)
    return kind if isinstance(kind, str) else type(sink).__name__.removesuffix("Sink").lower()


class HttpSink:
    """Common HTTP plumbing: one ``httpx.Client``, status codes mapped to the three errors."""

    name: str
    max_batch: int = 100

    def __init__(self, name: str, base_url: str, *, timeout: float = 10.0,
                 headers: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout, headers=dict(headers or {}))

    def _post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> httpx.Response:
        try:
            response = self._client.post(url, content=content, headers=dict(headers))
        except httpx.TimeoutException as exc:
            raise TransientError(f"timeout: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"connection error: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if status < 300:
            return response
        detail = f"HTTP {status}: {response.text[:300]}"
        if status in TRANSIENT_STATUSES or status >= 500:
            raise TransientError(detail, parse_retry_after(response.headers.get("retry-after")))
        if status in REJECTING_STATUSES:
            indexes, already = self._rejected_indexes(response)
            raise RejectedError(detail, indexes, already)
        if 300 <= status < 400:
            where = response.headers.get("location", "")[:300] or "no Location given"
            raise SinkUnavailable(f"HTTP {status}: the sink's url redirects ({where}); redirects are "
                                  "not followed: set the sink's url to the new endpoint")
        raise SinkUnavailable(detail)

    def _rejected_indexes(self, response: httpx.Response) -> tuple[dict[int, str] | None, set[int]]:
        """Which records of the batch the server refused (and which it already had), when its
        answer says so."""
        return None, set()

    def close(self) -> None:
        self._client.close()
