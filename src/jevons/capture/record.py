"""The append-log line of a deferred capture, and the event it rebuilds after a crash.

Why (issue 3): inside a real SDK call, jevons' own Python runs with cold CPU caches, several
times slower than in a warm loop, so the work done on the caller's thread is the added
latency. A wrapped call that finishes normally therefore does only this on its thread: the
adapter's snapshot of the response (``MethodSpec.snapshot``: the few fields its extractor
reads, e.g. ``model``, ``service_tier`` and the ``usage`` block) and the call's identity are
encoded as one JSON line by msgspec (in C; pydantic models are read through their
``__dict__``; ``FieldSnapshot`` keeps a model's extra fields beside it) and written to the
append log, a memory-mapped file (``jevons.ledger.maplog``). Once that store
returns, the call survives a ``kill -9``. The ledger's background thread then extracts,
prices and builds the ``Event`` from the live response (``Meter._complete_capture``) and
stores it under the same id.

If the process dies before that, the next process that drains the log rebuilds the event from
the line alone (``read_capture``): the provider's own extractor reads the snapshot as the JSON
it is, and the call is priced as of its timestamp, through the same ``capture.build`` rules as
a live event. What a snapshot leaves out (e.g. the number of tool calls in an OpenAI chat
answer, which no price uses) is missing from a rebuilt event only.

Line: ``["C1", id_prefix, id_counter, ts_us, provider, api, extractor, model_requested,
customer, feature, tags, attempt, region, snapshot]`` (the event id is
``capture_id(id_prefix, id_counter)``, formatted off the caller's thread); the snapshot is
a JSON object in the provider's shape, or a ``[names, values]`` pair of its top-level fields
(``adapters.snapshot_fields``). ``log_capture`` writes it, ``read_capture`` reads it.
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import os
from collections.abc import Callable
from time import time_ns
from typing import TYPE_CHECKING, Any

import msgspec

from jevons.capture.attribution import _CONTEXT, EMPTY
from jevons.capture.build import extract_or_review, make_event, outcome
from jevons.events import Event
from jevons.ledger.base import CAPTURE_PREFIX
from jevons.ledger.codec import from_micros

if TYPE_CHECKING:
    from jevons.capture.attribution import Attribution
    from jevons.capture.meter import Call, Meter
    from jevons.prices.book import PriceBook

__all__ = ["IDS", "TAG", "Deferrer", "FieldSnapshot", "Ids", "capture_id", "capture_reader", "deferrer",
           "from_micros", "log_capture", "read_capture"]

TAG = "C1"
assert b'["' + TAG.encode() + b'",' == CAPTURE_PREFIX  # the ledger tells capture lines by it

log = logging.getLogger("jevons.capture")


class FieldSnapshot:
    """A snapshot of a response's top-level fields ``names``, as a ``(names, values)`` pair:
    one C call (``operator.attrgetter``) on an SDK object, no dict built on the caller's
    thread. Nested SDK models are written as
    their declared fields (their ``__dict__``, read by the encoder in C). The extra fields of
    the model named ``extras_of`` (``__pydantic_extra__``, where a gateway puts what the SDK
    does not declare, e.g. OpenRouter's ``usage.cost``) are read by the same C call into the
    field ``"<name>+"``, which ``read_capture`` merges back; extra fields of models nested
    deeper are not kept (the SDK declares the fields the extractors read there). A response
    that lacks a field (e.g. a raw-response wrapper, or no usage block) has no snapshot: it
    is recorded at once instead."""

    __slots__ = ("getter", "names")

    def __init__(self, *names: str, extras_of: str | None = None) -> None:
        if extras_of is not None and extras_of not in names:
            raise ValueError(f"extras_of={extras_of!r} is not one of the fields {names}")
        paths = [*names, *([f"{extras_of}.__pydantic_extra__"] if extras_of else [])]
        self.names: tuple[str, ...] = (*names, *([extras_of + EXTRA] if extras_of else []))
        self.getter = operator.attrgetter(*paths) if len(paths) > 1 else (
            lambda obj, _get=operator.attrgetter(paths[0]): (_get(obj),))

    def __call__(self, response: Any) -> tuple[tuple[str, ...], tuple[Any, ...]] | None:
        # (``deferrer`` takes an SDK object's snapshot itself, the same way: one frame fewer)
        if type(response) is dict:
            return self.names, tuple([response.get(name) for name in self.names])
        try:
            return self.names, self.getter(response)
        except AttributeError:
            return None


#: the suffix of a snapshot field holding the extra fields of the field it names
EXTRA = "+"


_encoder = msgspec.json.Encoder(enc_hook=operator.attrgetter("__dict__"), decimal_format="string")
_decoder = msgspec.json.Decoder()


class Ids:
    """Unique event ids cheaply: a random per-process prefix and a counter (re-seeded after
    fork); ``capture_id`` formats one."""

    def __init__(self) -> None:
        self._seed()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._seed)

    def _seed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(1)

    def next(self) -> str:
        return capture_id(self.prefix, next(self.counter))


IDS = Ids()


def capture_id(prefix: str, counter: int) -> str:
    """The event id of a capture: the meter's id form (per-process prefix, 12 hex digits)."""
    return f"{prefix}{counter:012x}"


def log_capture(meter: Meter, call: Call, response: Any) -> bool:
    """Make a finished call durable and leave the rest for later (``deferrer``). The one rule of
    what is deferred. False, and ``call.deferrer`` cleared so that nothing tries again: not
    deferred (a call without a snapshot, a meter without a capturing store, a guard or a run
    that must see the cost before the next call, the SDK retried, the store is catching up
    after an outage, or the snapshot does not know the response); the caller then records the
    call at once. (``adapters.instrument``'s lean path applies the same rule itself, without a
    ``Call``.)"""
    defer = call.deferrer
    if (defer is None or not meter._deferred or meter.guards or call.run is not None
            or len(call.http_attempts) > 1):  # retries: one event per attempt, now
        call.deferrer = None
        return False
    call.done = True
    if defer(response, call.model, call.attribution, call.attempt_no or 1, call):
        return True
    call.done = False
    call.deferrer = None
    return False


#: ``deferrer``'s function: ``defer(response, model[, attribution, attempt, call]) -> taken``
Deferrer = Callable[..., bool]


def _not_taken(line: bytes, item: Any, complete: Callable[[Any], Event]) -> bool:
    return False


def deferrer(meter: Meter, snapshot_of: Callable[[Any], Any], provider: str, api: str | None,
             extractor: str, region: str | None, client: Attribution) -> Deferrer:
    """The function that defers the finished calls of one metered method (a provider's API on
    one wrapped client: ``provider``, ``api``, ``extractor`` and ``region`` are its, ``client``
    its wrapped client's attribution, and ``snapshot_of`` its ``MethodSpec.snapshot``), made
    once when the method is wrapped.

    ``defer(response, model, attribution, attempt, call)`` writes the line of a finished call
    to the append log and hands the rest to the ledger's background thread: on the caller's
    thread only the adapter's snapshot of the response (a few fields) and the call's identity
    are encoded, by msgspec in C, as the line of the module docstring (fields in that order;
    no newline can occur in it). Extraction, pricing, the ``Event``, its row and the sinks run
    in the background thread (``Meter._complete_capture``), in order, for ``call`` or, when
    ``None`` (the lean path, which makes no ``Call``), for one it makes there from these
    fields; with no ``call``, ``attribution`` (by default ``client``) is resolved here
    (``Meter.attribution_of``). The line is enough to rebuild the event if the process dies
    first (``read_capture``). False: not taken (the snapshot does not know the response, the
    store declined, or failed: counted); record the call at once.

    Why a function made per method: it is every ordinary call's hot path, run on the CPU
    caches the SDK left cold, where each Python operation counts (measured: the whole of
    jevons' added latency above the least a wrapper can do, ``bench/bench_capture.py``'s
    python-floor, went with the number of bytecodes run). What is the same for every call of
    the method is bound here, once, so a lean call passes two arguments, and the snapshot of
    an SDK object by a ``FieldSnapshot`` is taken inline (one frame fewer)."""
    names: tuple[str, ...] | None = None
    getter: Callable[[Any], Any] | None = None
    if type(snapshot_of) is FieldSnapshot:
        names, getter = snapshot_of.names, snapshot_of.getter
    append: Callable[[bytes, Any, Callable[[Any], Event]], bool] = getattr(
        meter.store, "append_capture", _not_taken)
    complete = functools.partial(meter._complete_capture, (provider, api, extractor, region))
    context_of = _CONTEXT.get
    encode = _encoder.encode
    ids = IDS

    def defer(response: Any, model: str, attribution: Attribution = client, attempt: int = 1,
              call: Call | None = None) -> bool:
        try:
            if call is None and (context_of() is not EMPTY or meter.default is not EMPTY):
                attribution = meter.attribution_of(attribution)  # (else: nothing to merge, no frame)
            if getter is not None and type(response) is not dict:  # ``FieldSnapshot.__call__``
                try:
                    snapshot: Any = names, getter(response)
                except AttributeError:
                    return False
                kept = response
            else:
                snapshot = snapshot_of(response)
                if snapshot is None:
                    return False
                # a snapshot in the provider's JSON shape is what the extractor reads after a
                # crash: the background thread reads it too (no second parse, no live response)
                kept = snapshot if type(snapshot) is dict else response
            # the event id is formatted later (``capture_id``): only its parts here
            prefix = ids.prefix
            n = next(ids.counter)
            ts = time_ns() // 1000
            line = encode((TAG, prefix, n, ts, provider, api, extractor, model, attribution.customer,
                           attribution.feature, attribution.tags or None, attempt, region, snapshot))
            return append(line, (call, model, attribution, kept, prefix, n, ts), complete)
        except Exception as exc:
            meter._error(exc, "store")
        return False

    return defer


def _log_error(exc: BaseException, kind: str) -> None:
    """A failure while rebuilding (extraction, pricing): the event is kept, flagged for review
    or unpriced; say why in the log."""
    log.warning("jevons: %s error while rebuilding a call from the append log: %r", kind, exc)


def read_capture(line: bytes, book: PriceBook) -> Event:
    """The event of a capture line whose process died before building it (see module doc)."""
    (tag, id_prefix, id_counter, ts_us, provider, api, extractor_key, model, customer, feature, tags,
     attempt, region, snapshot) = _decoder.decode(line)
    if tag != TAG:
        raise ValueError(f"not a capture line: {tag!r}")
    event_id = capture_id(id_prefix, id_counter)
    if isinstance(snapshot, list):  # a (names, values) pair: the response's top-level fields
        names, values = snapshot
        snapshot = {}
        for name, value in zip(names, values, strict=True):
            if name.endswith(EXTRA):
                base = snapshot.get(name[: -len(EXTRA)])
                if value and isinstance(base, dict):
                    snapshot[name[: -len(EXTRA)]] = {**base, **value}
            else:
                snapshot[name] = value
    x = extract_or_review(extractor_key, api, snapshot, model, _log_error)
    status, error = outcome(x, "ok", None)
    at = from_micros(ts_us)
    return make_event(
        book, _log_error, event_id=event_id, idempotency_key=event_id, timestamp=at,
        provider=provider, api=api, model_requested=model, x=x, customer=customer, feature=feature,
        tags=tags, run_id=None, step=None, attempt=attempt, status=status, error=error,
        region=region, price_at=at,
    )


def capture_reader(book: PriceBook | None = None) -> Callable[[bytes], Event]:
    """``read_capture`` bound to ``book`` (``None``: the default book, loaded on first use)."""
    loaded: list[PriceBook] = [] if book is None else [book]

    def read(line: bytes) -> Event:
        if not loaded:
            from jevons.prices.loader import default_book

            loaded.append(default_book())
        return read_capture(line, loaded[0])

    return read
