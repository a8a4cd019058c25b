"""Usage x price -> Cost: disjoint buckets, long-context tiers, fallbacks, never a silent $0."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jevons.prices.cost import Cost, CostLine, price_usage
from jevons.prices.loader import load_bundled_book
from jevons.prices.model import Dim, PriceVersion, Tier
from jevons.usage import Usage

M = Decimal("0.000001")  # one USD per million tokens, per token

FULL = PriceVersion(
    provider="acme",
    model="full-1",
    source="test",
    rates={
        Dim.INPUT: 3 * M,
        Dim.CACHE_READ: Decimal("0.3") * M,
        Dim.CACHE_WRITE_5M: Decimal("3.75") * M,
        Dim.CACHE_WRITE_1H: 6 * M,
        Dim.OUTPUT: 15 * M,
        Dim.REASONING: 20 * M,
        Dim.AUDIO_INPUT: 7 * M,
        Dim.AUDIO_OUTPUT: 30 * M,
        Dim.IMAGE_INPUT: 4 * M,
        Dim.IMAGE_OUTPUT: 40 * M,
        Dim.REQUEST: Decimal("0.001"),
        Dim.WEB_SEARCH: Decimal("0.01"),
    },
    tiers=(Tier(200_000, {Dim.INPUT: 6 * M, Dim.OUTPUT: Decimal("22.5") * M}),),
)

BOOK = load_bundled_book()


def line(cost: Cost, dim: str) -> CostLine:
    return next(x for x in cost.lines if x.dimension == dim)


def test_anthropic_with_cache_is_priced_per_disjoint_bucket() -> None:
    usage = Usage(
        input_tokens=10_000,
        cache_read_tokens=6_000,
        cache_write_5m_tokens=1_000,
        cache_write_1h_tokens=1_000,
        output_tokens=500,
    )
    cost = BOOK.cost("claude-sonnet-4-5-20250929", usage, provider="anthropic")
    assert cost.status == "priced"
    assert [(x.dimension, x.tokens, x.usd) for x in cost.lines] == [
        ("input", 2_000, Decimal("0.006")),
        ("cache_read", 6_000, Decimal("0.0018")),
        ("cache_write_5m", 1_000, Decimal("0.00375")),
        ("cache_write_1h", 1_000, Decimal("0.006")),
        ("output", 500, Decimal("0.0075")),
    ]
    assert cost.total_usd == Decimal("0.02505")
    assert isinstance(cost.total_usd, Decimal)
    assert cost.price_version and cost.price_version.startswith("openrouter:anthropic/claude-sonnet-4.5")
    assert cost.source == "openrouter"


@pytest.mark.parametrize(
    ("input_tokens", "input_rate", "output_rate", "threshold"),
    [(200_000, 3, 15, None), (200_001, 6, Decimal("22.5"), 200_000)],
)
def test_long_context_tier_reprices_the_whole_call(
    input_tokens: int, input_rate: Decimal, output_rate: Decimal, threshold: int | None
) -> None:
    usage = Usage(input_tokens=input_tokens, output_tokens=1_000)
    cost = BOOK.cost("claude-sonnet-4.5", usage, provider="anthropic")
    assert cost.tier_threshold == threshold
    assert line(cost, "input").usd_per_token == input_rate * M
    assert line(cost, "output").usd_per_token == output_rate * M
    assert cost.total_usd == input_tokens * input_rate * M + 1_000 * output_rate * M


def test_gemini_over_200k_prices_every_token_at_the_tier() -> None:
    cost = BOOK.cost("gemini-2.5-pro", Usage(input_tokens=250_000, output_tokens=2_000), provider="gemini")
    assert cost.total_usd == Decimal("0.655")  # 250K x $2.50/M + 2K x $15/M
    assert cost.tier_threshold == 200_000


def test_distinct_reasoning_audio_image_requests_and_searches() -> None:
    usage = Usage(
        input_tokens=1_000,
        audio_input_tokens=100,
        image_input_tokens=200,
        output_tokens=1_000,
        reasoning_tokens=300,
        audio_output_tokens=50,
        image_output_tokens=10,
        web_search_requests=2,
    )
    cost = price_usage(FULL, usage, model_requested="full-1", as_of=None)
    got = {x.dimension: x.tokens for x in cost.lines}
    assert got == {
        "input": 700,
        "audio_input": 100,
        "image_input": 200,
        "output": 640,
        "reasoning": 300,
        "audio_output": 50,
        "image_output": 10,
        "web_search": 2,
        "request": 1,
    }
    assert cost.total_usd == sum((x.usd for x in cost.lines), Decimal(0))
    assert cost.status == "priced"


def test_reasoning_without_a_distinct_price_stays_in_output() -> None:
    usage = Usage(input_tokens=10, output_tokens=100, reasoning_tokens=60)
    cost = BOOK.cost("o3", usage, provider="openai")
    assert {x.dimension: x.tokens for x in cost.lines} == {"input": 10, "output": 100}


def test_a_missing_cache_price_falls_back_to_input_and_is_estimated() -> None:
    version = PriceVersion("acme", "plain", {Dim.INPUT: 2 * M, Dim.OUTPUT: 8 * M}, source="test")
    cost = price_usage(
        version, Usage(input_tokens=100, cache_write_1h_tokens=40), model_requested="plain", as_of=None
    )
    assert cost.status == "estimated"
    assert line(cost, "cache_write_1h").priced_as == "input"
    assert cost.total_usd == 100 * 2 * M


def test_a_missing_token_price_is_unpriced_never_zero() -> None:
    version = PriceVersion("acme", "embed", {Dim.INPUT: 2 * M}, source="test")
    cost = price_usage(version, Usage(input_tokens=100, output_tokens=1), model_requested="embed", as_of=None)
    assert cost.status == "unpriced"
    assert cost.total_usd is None
    assert cost.missing == ("output",)
    assert cost.price_version == version.version_id  # re-priceable: names what it tried


def test_unknown_model_is_unpriced_and_keeps_what_was_asked() -> None:
    cost = BOOK.cost("no-such-model-9000", Usage(input_tokens=5, output_tokens=5), provider="openai")
    assert cost.status == "unpriced"
    assert cost.total_usd is None
    assert cost.model_requested == "no-such-model-9000"
    assert not cost.lines
    assert cost.notes and "no model" in cost.notes[0]


def test_fallback_price_class_is_estimated_and_flagged() -> None:
    book = load_bundled_book()
    _, fallback, _ = book.lookup("gpt-4o-mini")
    assert fallback is not None
    book.fallback = fallback
    cost = book.cost("mystery-model", Usage(input_tokens=1_000, output_tokens=100))
    assert cost.status == "estimated"
    assert cost.model_requested == "mystery-model"
    assert cost.model == "gpt-4o-mini"
    assert cost.total_usd == 1_000 * Decimal("0.15") * M + 100 * Decimal("0.6") * M
    assert "fallback price class" in cost.notes[0]


def test_cost_dict_round_trip_keeps_exact_decimals() -> None:
    cost = BOOK.cost("claude-sonnet-4.5", Usage(input_tokens=3, cache_read_tokens=1, output_tokens=1))
    data = cost.to_dict()
    assert data["total_usd"] == "0.0000213"
    assert line(cost, "cache_read").to_dict()["usd_per_token"] == "0.0000003"  # fixed point, no exponent
    assert Cost.from_dict(data) == cost


def test_dated_price_is_used_at_the_time_of_the_call() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    before = BOOK.cost("o3", usage, provider="openai", at=datetime(2025, 5, 1, tzinfo=UTC))
    after = BOOK.cost("o3", usage, provider="openai", at=datetime(2025, 7, 1, tzinfo=UTC))
    now = BOOK.cost("o3", usage, provider="openai")
    assert before.total_usd == Decimal(50)  # $10 + $40 before the June 2025 cut
    assert after.total_usd == Decimal(10)  # $2 + $8 after
    assert now.total_usd == Decimal(10)
    assert before.price_version != after.price_version
    assert after.price_version == now.price_version
    naive = BOOK.cost("o3", usage, provider="openai", at=datetime(2025, 5, 1))
    assert naive.total_usd == Decimal(50)  # naive times are UTC


def test_a_tier_removed_later_applies_only_before_the_change() -> None:
    usage = Usage(input_tokens=300_000, output_tokens=0)
    old = BOOK.cost("claude-sonnet-4-6", usage, provider="anthropic", at=datetime(2026, 2, 1, tzinfo=UTC))
    new = BOOK.cost("claude-sonnet-4-6", usage, provider="anthropic", at=datetime(2026, 4, 1, tzinfo=UTC))
    assert old.total_usd == 300_000 * 6 * M
    assert new.total_usd == 300_000 * 3 * M


# ------------------------------------------------------------------ properties
counts = st.integers(min_value=0, max_value=15_000)  # two calls stay under a 200K tier


@st.composite
def usages(draw: st.DrawFn, *, web: bool = True) -> Usage:
    text_in, cr, cw5, cw1h, audio_in, image_in = (draw(counts) for _ in range(6))
    text_out, reasoning, audio_out, image_out = (draw(counts) for _ in range(4))
    return Usage(
        input_tokens=text_in + cr + cw5 + cw1h + audio_in + image_in,
        cache_read_tokens=cr,
        cache_write_5m_tokens=cw5,
        cache_write_1h_tokens=cw1h,
        audio_input_tokens=audio_in,
        image_input_tokens=image_in,
        output_tokens=text_out + reasoning + audio_out + image_out,
        reasoning_tokens=reasoning,
        audio_output_tokens=audio_out,
        image_output_tokens=image_out,
        web_search_requests=draw(st.integers(0, 3)) if web else 0,
    )


def total(version: PriceVersion, usage: Usage) -> Decimal:
    cost = price_usage(version, usage, model_requested=version.model, as_of=None)
    assert cost.total_usd is not None
    assert cost.total_usd == sum((x.usd for x in cost.lines), Decimal(0))
    return cost.total_usd


@settings(max_examples=150, deadline=None)
@given(a=usages(), b=usages())
def test_cost_is_additive_over_calls_below_a_tier(a: Usage, b: Usage) -> None:
    assert total(FULL, a) + total(FULL, b) == total(FULL, a + b)


@settings(max_examples=100, deadline=None)
@given(a=usages(web=False), b=usages(web=False))
def test_real_models_are_additive_over_calls(a: Usage, b: Usage) -> None:
    for model in ("gpt-4o", "claude-sonnet-4.5", "gemini-2.5-pro"):
        _, version, _ = BOOK.lookup(model)
        assert version is not None
        assert total(version, a) + total(version, b) == total(version, a + b)


KINDS = {
    "input": {"input_tokens": 1},
    "cache_read": {"input_tokens": 1, "cache_read_tokens": 1},
    "cache_write_5m": {"input_tokens": 1, "cache_write_5m_tokens": 1},
    "cache_write_1h": {"input_tokens": 1, "cache_write_1h_tokens": 1},
    "audio_input": {"input_tokens": 1, "audio_input_tokens": 1},
    "image_input": {"input_tokens": 1, "image_input_tokens": 1},
    "output": {"output_tokens": 1},
    "reasoning": {"output_tokens": 1, "reasoning_tokens": 1},
    "audio_output": {"output_tokens": 1, "audio_output_tokens": 1},
    "image_output": {"output_tokens": 1, "image_output_tokens": 1},
    "web_search": {"web_search_requests": 1},
    "requests": {"requests": 1},
}


@settings(max_examples=150, deadline=None)
@given(u=usages(), kind=st.sampled_from(sorted(KINDS)), k=st.integers(1, 300_000))
def test_cost_is_monotone_in_every_count(u: Usage, kind: str, k: int) -> None:
    more = Usage(**{n: v + KINDS[kind].get(n, 0) * k for n, v in u.to_dict().items()})
    for version in (FULL, BOOK.lookup("gemini-2.5-pro")[1], BOOK.lookup("claude-sonnet-4.5")[1]):
        assert version is not None
        if (
            kind in ("web_search", "requests", "reasoning", "audio_output", "image_output")
            and version is not FULL
        ):
            continue
        assert total(version, more) >= total(version, u)
