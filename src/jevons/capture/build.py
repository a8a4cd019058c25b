"""From what a call produced to its ``Event``: the one rule used by the meter and by recovery.

The meter builds events on the caller's thread (``record()``, runs, guarded meters, streams)
or in the ledger's background thread (deferred captures, see ``jevons.capture.record``), and
the ledger rebuilds them from the append log after a crash. All three go through
``price_extracted`` and ``make_event`` so that an event means the same whichever path made it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from jevons.capture.extract import _EXTRACTORS, Extracted, as_dict, get_extractor
from jevons.events import AttemptStatus, Event
from jevons.prices.book import PriceBook
from jevons.prices.cost import Cost, unpriced_cost
from jevons.prices.model import ServiceTier
from jevons.prices.resolve import PROVIDER_HINTS
from jevons.usage import Usage

__all__ = [
    "BOOK_PROVIDERS", "NO_USAGE", "ErrorHook", "extract_or_review", "make_event", "outcome",
    "price_extracted", "review_extracted", "review_usage",
]

ErrorHook = Callable[[BaseException, str], Any]

_TIERS = frozenset(t.value for t in ServiceTier)
#: providers the price book knows by name (the resolver's own hint table, so the rule lives in
#: one place); any other provider (a gateway) prices without a hint
BOOK_PROVIDERS = frozenset(name for name, book_name in PROVIDER_HINTS.items() if book_name is not None)


#: the usage of an attempt that produced nothing known
NO_USAGE = Usage(requests=0)


_REVIEW_NOTE = "usage shape not recognised; kept for review"


def review_usage(raw: dict[str, Any] | None, model: str | None = None) -> Extracted:
    """The event for a usage block no extractor knows, given as the raw block (a finished
    stream's, as its accumulator folded it): usage unknown, so ``unpriced`` (never $0), flagged
    for review with the block kept, so it can be read and re-priced later."""
    return Extracted(NO_USAGE, model=model, complete=False, needs_review=True, raw_usage=raw,
                     note=_REVIEW_NOTE)


def review_extracted(response: Any) -> Extracted:
    """The event for a response shape no extractor knows: usage unknown, raw block kept."""
    raw: dict[str, Any] | None
    try:
        usage_block = response.get("usage") if isinstance(response, Mapping) else getattr(
            response, "usage", None)
        if usage_block is not None:
            raw = as_dict(usage_block)
        elif response is None:
            raw = None
        else:
            raw = {"usage": None, "response_type": type(response).__name__}
    except Exception:
        raw = {"repr": repr(response)[:2000]}
    return review_usage(raw)


def extract_or_review(extractor: str, api: str | None, response: Any, model: str,
                      on_error: ErrorHook) -> Extracted:
    """The usage of a complete response (an SDK object, a dict, or a logged snapshot) by the
    extractor registered for ``(extractor, api)``; never raises: an unknown shape or a failing
    extractor goes to ``on_error(exc, "extract")`` and gives an event flagged for review."""
    try:
        fn = _EXTRACTORS.get((extractor, api)) or get_extractor(extractor, api)
        return fn(response, model)
    except Exception as exc:
        on_error(exc, "extract")
        return review_extracted(response)


def price_extracted(book: PriceBook, provider: str, model: str, x: Extracted, region: str | None,
                    on_error: ErrorHook, *, at: datetime | None = None) -> Cost:
    """The cost from the price book; never raises (a pricing failure is an unpriced cost).
    Incomplete usage: unpriced when nothing is known, else an estimated lower bound."""
    usage = x.usage
    tier = x.service_tier
    try:
        cost = book.cost(model, usage, provider=provider if provider in BOOK_PROVIDERS else None,
                         tier=tier if tier in _TIERS else None, region=region, at=at)
    except Exception as exc:
        on_error(exc, "price")
        return unpriced_cost(model, provider=provider, note=f"pricing failed: {exc}")
    if not x.complete:
        if not usage.input_tokens and not usage.output_tokens:
            return unpriced_cost(model, provider=cost.provider, model=cost.model,
                                 note="usage unknown (incomplete); re-price when known")
        if cost.status == "priced":
            cost = replace(cost, status="estimated", notes=(*cost.notes, "usage incomplete: a lower bound"))
    return cost


def outcome(x: Extracted, status: AttemptStatus, error: str | None) -> tuple[AttemptStatus, str | None]:
    """The attempt status: the response's own failure (e.g. a Responses ``failed``) overrides ok."""
    if x.status is not None and status == "ok" and x.status in ("error", "aborted"):
        return x.status, error or x.note  # type: ignore[return-value]
    return status, error


def make_event(
    book: PriceBook,
    on_error: ErrorHook,
    *,
    event_id: str,
    idempotency_key: str,
    timestamp: datetime,
    provider: str,
    api: str | None,
    model_requested: str,
    x: Extracted,
    customer: str | None,
    feature: str | None,
    tags: Mapping[str, Any] | None,
    run_id: str | None,
    step: int | None,
    attempt: int,
    status: AttemptStatus,
    error: str | None,
    region: str | None,
    price_at: datetime | None = None,
) -> Event:
    """The priced ``Event`` of one attempt (``price_at``: price as of that time, for recovery)."""
    model = x.model or model_requested
    region = x.region or region
    cost = price_extracted(book, provider, model, x, region, on_error, at=price_at)
    needs_review = x.needs_review
    return Event(
        event_id,
        idempotency_key,
        timestamp,
        provider,
        model_requested or model,
        x.usage,
        cost,
        customer,
        feature,
        dict(tags) if tags else {},
        api,
        run_id,
        step,
        attempt,
        status,
        x.complete,
        x.gateway_cost_usd,
        needs_review,
        x.raw_usage,
        error if error is not None or not needs_review else x.note,
        region,
        x.service_tier,
    )

