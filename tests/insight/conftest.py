"""Shared helpers of the insight tests: a small price book with hand-checkable rates."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from jevons.insight.scenario import Scenario, parse_scenario
from jevons.prices.book import PriceBook
from jevons.prices.model import Dim, PriceVersion, Tier

M = Decimal("0.000001")  # USD per token of $1 per Mtok


def version(
    model: str, provider: str = "openai", *, tiers: tuple[Tier, ...] = (), **per_mtok: Any
) -> PriceVersion:
    return PriceVersion(
        provider=provider,
        model=model,
        source="test",
        rates={Dim(k): Decimal(str(v)) * M for k, v in per_mtok.items()},
        tiers=tiers,
    )


@pytest.fixture
def book() -> PriceBook:
    """base: $1 in / $4 out / $0.10 cache read / $1.25 cache write; premium: $3 / $15 with a
    long-context tier above 3,000 input tokens at $6 / $22.50."""
    return PriceBook(
        [
            version("base-1", input=1, output=4, cache_read="0.1", cache_write_5m="1.25"),
            version(
                "premium-1",
                "anthropic",
                input=3,
                output=15,
                cache_read="0.3",
                cache_write_5m="3.75",
                tiers=(Tier(3000, {Dim.INPUT: Decimal(6) * M, Dim.OUTPUT: Decimal("22.5") * M}),),
            ),
        ]
    )


def scenario(**overrides: Any) -> Scenario:
    """A small scenario on the test book; ``overrides`` are top-level sections merged in."""
    data: dict[str, Any] = {
        "name": "test",
        "seed": 1,
        "customers": {
            "count": 40,
            "median_tasks": 100,
            "p99_over_median": 60,
            "monthly_noise": 0.0,
            "plans": [{"name": "starter", "share": 1.0}],
        },
        "task": {"prompt_tokens": 1000, "output_tokens": 100, "steps": 1},
        "models": [{"name": "base-1", "share": 1.0}],
        "time": {"months": 3},
        "policy": {"files": ["builtin:flat", "builtin:cost-plus"]},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_scenario(data)
