"""Lago: ``POST /api/v1/events/batch`` (at most 100 events a request).

Token mode sends one Lago event per non-zero usage bucket, each to its billable metric code.
The buckets are disjoint so that every token is billed once: ``input`` is the *uncached* input
(``input_tokens`` minus cache reads and writes), ``cached_input`` the cache reads,
``cache_write`` the cache writes, ``output`` the whole output (reasoning included). The
``transaction_id`` of a bucket event is ``<idempotency key>:<metric code>`` (Lago deduplicates on
``transaction_id``, and one call makes several events); ``properties.tokens`` holds the count.

Price mode sends one ``llm_cost`` event per call with ``transaction_id`` = the idempotency key
and ``precise_total_amount_cents`` = the charge in cents (for a ``dynamic`` charge model), at
the precision Lago stores it: ``numeric(40,15)``, so the amount is rounded half-even to 15
decimal places of a cent (1e-17 USD) — the only rounding on this path; the exact USD amount,
the cost breakdown and the price version ride in ``properties``. The charge comes from
``amount_for(event)`` (USD; default ``cost.total_usd * billing.markup``). An unpriced event is
never sent as $0: it is held until ``jevons reprice`` prices it.

``external_subscription_id`` is the event's customer; an event without a customer is held as
``unattributed``. Property values are strings: Lago's schema allows string | integer | number
under ``oneOf``, and an integer would match two branches.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import httpx

from jevons.events import Event
from jevons.ledger.codec import ts_micros
from jevons.sinks.base import Hold, HttpSink, Record
from jevons.sinks.buckets import BUCKETS, DEFAULT_METRIC_CODES, bucket_counts
from jevons.sinks.buckets import metric_codes as bucket_metric_codes

__all__ = ["BUCKETS", "DEFAULT_METRIC_CODES", "LagoSink", "decimal_str", "default_amount_for"]

AmountFor = Callable[[Event], Decimal | None]


def default_amount_for(markup: Decimal) -> AmountFor:
    """``cost.total_usd * markup``; ``None`` (hold) while the event is unpriced."""

    def amount(event: Event) -> Decimal | None:
        total = event.cost.total_usd
        return None if total is None else total * markup

    return amount


LAGO_CENTS_QUANTUM = Decimal("1e-15")  # Lago's precise_total_amount_cents is numeric(40,15)


def lago_cents(amount_usd: Decimal) -> Decimal:
    """USD -> cents at Lago's stored precision (half-even to 15 places of a cent)."""
    return (amount_usd * 100).quantize(LAGO_CENTS_QUANTUM, rounding=ROUND_HALF_EVEN)


def decimal_str(value: Decimal) -> str:
    """A Decimal as plain positional digits (never exponent notation)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def lago_timestamp(event: Event) -> str:
    us = ts_micros(event.timestamp)
    return f"{us // 1_000_000}.{(us % 1_000_000) // 1000:03d}"


class LagoSink(HttpSink):
    kind = "lago"
    max_batch = 100

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        *,
        mode: str = "token",
        metric_codes: Mapping[str, str] | None = None,
        cost_metric_code: str = "llm_cost",
        amount_for: AmountFor | None = None,
        timeout: float = 10.0,
        batch_size: int = 100,
    ) -> None:
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        super().__init__(name, base_url, timeout=timeout, headers=headers)
        if mode not in ("token", "price"):
            raise ValueError(f"sink {name}: mode must be 'token' or 'price', got {mode!r}")
        self.mode = mode
        self.max_batch = max(1, min(batch_size, 100))
        self.metric_codes = bucket_metric_codes(name, metric_codes)
        self.cost_metric_code = cost_metric_code
        self.amount_for = amount_for or default_amount_for(Decimal(1))
        url = self.base_url
        self.url = url if url.endswith("/api/v1") else f"{url}/api/v1"
        self.url += "/events/batch"

    def prepare(self, event: Event) -> list[Record] | Hold:
        if not event.attributed:
            return Hold("unattributed", "no customer: no Lago subscription to bill")
        common: dict[str, str] = {"provider": event.provider, "model": event.model or event.model_requested}
        if event.feature:
            common["feature"] = event.feature
        if event.run_id:
            common["run_id"] = event.run_id
        ts = lago_timestamp(event)
        if self.mode == "price":
            # never bill an unpriced call, whatever amount_for would say: it waits for a price
            total = event.cost.total_usd
            amount = None if total is None else self.amount_for(event)
            if total is None or amount is None:
                return Hold("waiting_for_price", f"{event.model_requested}: unpriced")
            props = dict(common)
            props["cost_usd"] = decimal_str(total)
            props["amount_usd"] = decimal_str(amount)
            props["price_version"] = event.cost.price_version or ""
            props["cost_status"] = event.cost.status
            for line in event.cost.lines:
                props[f"{line.dimension}_tokens"] = str(line.tokens)
                props[f"{line.dimension}_usd"] = decimal_str(line.usd)
            return [{
                "transaction_id": event.idempotency_key,
                "external_subscription_id": event.customer,
                "code": self.cost_metric_code,
                "timestamp": ts,
                "precise_total_amount_cents": decimal_str(lago_cents(amount)),
                "properties": props,
            }]
        out: list[Record] = []
        for code, count in bucket_counts(event.usage, self.metric_codes):
            props = dict(common)
            props["tokens"] = str(count)
            out.append({
                "transaction_id": f"{event.idempotency_key}:{code}",
                "external_subscription_id": event.customer,
                "code": code,
                "timestamp": ts,
                "properties": props,
            })
        return out

    def send(self, records: Sequence[Record]) -> None:
        body = json.dumps({"events": list(records)}, separators=(",", ":")).encode()
        self._post(self.url, content=body, headers={})

    def _rejected_indexes(self, response: httpx.Response) -> tuple[dict[int, str] | None, set[int]]:
        try:
            details: Any = response.json().get("error_details")
        except (ValueError, AttributeError):
            return None, set()
        if not isinstance(details, dict) or not details or not all(
            str(k).isdigit() for k in details
        ):
            return None, set()
        refused: dict[int, str] = {}
        already: set[int] = set()
        for key, errors in details.items():
            text = json.dumps(errors, separators=(",", ":"))
            if isinstance(errors, dict) and set(errors) == {"transaction_id"} and (
                "value_already_exist" in text
            ):
                already.add(int(key))
            else:
                refused[int(key)] = f"HTTP {response.status_code}: {text[:300]}"
        return refused, already
