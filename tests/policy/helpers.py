"""Event and policy builders for the policy tests."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from jevons.events import Event
from jevons.policy.loader import parse_policy
from jevons.policy.model import Policy
from jevons.prices.cost import Cost, CostLine
from jevons.usage import Usage

_counter = iter(range(1, 10**9))


def at(day: int, hour: int = 12, month: int = 3, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def event(
    cost: str | None,
    *,
    when: datetime | None = None,
    customer: str | None = "acme",
    model: str = "gpt-4o-mini",
    provider: str = "openai",
    input_tokens: int = 1000,
    output_tokens: int = 500,
    cache_read_tokens: int = 0,
    reasoning_tokens: int = 0,
    feature: str | None = None,
    input_usd_per_mtok: str | None = None,
    eid: str | None = None,
) -> Event:
    n = next(_counter)
    eid = eid or f"ev{n:06d}"
    lines: tuple[CostLine, ...] = ()
    if input_usd_per_mtok is not None:
        rate = Decimal(input_usd_per_mtok) / 1_000_000
        lines = (CostLine("input", input_tokens, rate, rate * input_tokens),)
    total = None if cost is None else Decimal(cost)
    return Event(
        id=eid,
        idempotency_key=eid,
        timestamp=when or at(10),
        provider=provider,
        model_requested=model,
        usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                    cache_read_tokens=cache_read_tokens, reasoning_tokens=reasoning_tokens),
        cost=Cost(model, model, provider, "unpriced" if total is None else "priced", total, lines,
                  price_version=None if total is None else "test:v1"),
        customer=customer,
        feature=feature,
    )


def policy(text: str, **_: Any) -> Policy:
    return parse_policy(text, file="test.toml")


#: a policy file: price mode at 3x cost, a 0.05 USD cap that blocks (config wiring tests)
CAPPED_MARKUP_POLICY = """
default_plan = "p"
[plans.p]
cap = "0.05"
cap_enforcement = "block"
[plans.p.classes.base]
mode = "price"
markup = 3
"""
