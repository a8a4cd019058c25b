"""The resolution table: every name form capture adapters and users pass, and the tie rule."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from jevons.prices.book import PriceBook
from jevons.prices.loader import load_bundled_book
from jevons.prices.model import Dim, Layer, PriceVersion
from jevons.prices.resolve import normalise, parse_bedrock, provider_hint

BOOK = load_bundled_book()
CLAUDE_45 = "anthropic.claude-sonnet-4-5-20250929-v1:0"

TABLE = [
    # name, provider hint, expected key, step, geo, region
    ("gpt-4o", "openai", "openai/gpt-4o", "exact native id", None, None),
    ("gpt-4o-2024-08-06", "openai", "openai/gpt-4o-2024-08-06", "exact native id", None, None),
    ("gpt-4o-2024-07-01", None, "openai/gpt-4o", "normalised name", None, None),  # unknown date -> base
    ("o3-2025-04-16", "openai", "openai/o3", "normalised name", None, None),
    ("GPT-4o", None, "openai/gpt-4o", "exact native id", None, None),
    ("claude-sonnet-4-5-20250929", "anthropic", "anthropic/claude-sonnet-4.5", "normalised name", None, None),
    ("claude-sonnet-4-5", "anthropic", "anthropic/claude-sonnet-4.5", "normalised name", None, None),
    ("claude-opus-4-1-20250805", None, "anthropic/claude-opus-4.1", "normalised name", None, None),
    ("claude-3-haiku-20240307", "anthropic", "anthropic/claude-3-haiku", "normalised name", None, None),
    ("gemini-2.5-pro", "gemini", "google/gemini-2.5-pro", "exact native id", None, None),
    ("models/gemini-2.5-flash", "google-genai", "google/gemini-2.5-flash", "normalised name", None, None),
    (
        "anthropic/claude-sonnet-4.5",
        "openrouter",
        "anthropic/claude-sonnet-4.5",
        "exact key or alias",
        None,
        None,
    ),
    (
        "anthropic/claude-4.5-sonnet-20250929",
        "openrouter",
        "anthropic/claude-sonnet-4.5",
        "exact key or alias",
        None,
        None,
    ),
    ("~anthropic/claude-sonnet-latest", None, "anthropic/claude-sonnet-5", "exact key or alias", None, None),
    ("openai/gpt-4o:batch", "openrouter", "openai/gpt-4o", "normalised name", None, None),
    ("mistral-large-latest", "mistral", "mistralai/mistral-large-2512", "alias table", None, None),
    ("mistral-small-latest", "mistral", "mistralai/mistral-small-2603", "alias table", None, None),
    ("mistral-small-2503", "mistral", "mistralai/mistral-small-3.1-24b-instruct", "alias table", None, None),
    ("mistral-small-2506", "mistral", "mistralai/mistral-small-3.2-24b-instruct", "alias table", None, None),
    ("mistral-medium-latest", "mistral", "mistralai/mistral-medium-3-5", "alias table", None, None),
    ("ministral-8b-2512", "mistral", "mistralai/ministral-8b-2512", "exact native id", None, None),
    ("voxtral-mini-2507", "mistral", "mistralai/voxtral-mini-3b-2507", "dated-snapshot rule", None, None),
    ("ministral-3b-latest", None, "mistralai/ministral-3b-2512", "alias table", None, None),
    (CLAUDE_45, "bedrock", f"bedrock/{CLAUDE_45}", "Bedrock id", None, None),
    (f"us.{CLAUDE_45}", "bedrock", f"bedrock/{CLAUDE_45}", "Bedrock id", "us", None),
    (f"eu.{CLAUDE_45}", None, f"bedrock/{CLAUDE_45}", "Bedrock id", "eu", None),
    (f"global.{CLAUDE_45}", None, f"bedrock/{CLAUDE_45}", "Bedrock id", "global", None),
    (f"apac.{CLAUDE_45}", "aws", f"bedrock/{CLAUDE_45}", "Bedrock id", "apac", None),
    (
        f"arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.{CLAUDE_45}",
        None,
        f"bedrock/{CLAUDE_45}",
        "Bedrock id",
        "eu",
        "eu-west-1",
    ),
    (
        f"arn:aws:bedrock:us-west-2::foundation-model/{CLAUDE_45}",
        None,
        f"bedrock/{CLAUDE_45}",
        "Bedrock id",
        None,
        "us-west-2",
    ),
    ("us.amazon.nova-pro-v1:0", "bedrock", "bedrock/amazon.nova-pro-v1:0", "Bedrock id", "us", None),
    ("bedrock/us.amazon.nova-pro-v1:0", "litellm", "bedrock/amazon.nova-pro-v1:0", "Bedrock id", "us", None),
    ("amazon.nova-pro-v1:0", None, "bedrock/amazon.nova-pro-v1:0", "Bedrock id", None, None),
    (
        "us.anthropic.claude-opus-4-7",
        "bedrock",
        "bedrock/anthropic.claude-opus-4-7",
        "Bedrock id",
        "us",
        None,
    ),
]


@pytest.mark.parametrize(("name", "hint", "key", "step", "geo", "region"), TABLE)
def test_resolution_table(
    name: str, hint: str | None, key: str, step: str, geo: str | None, region: str | None
) -> None:
    res = BOOK.resolve(name, hint)
    assert f"{res.provider}/{res.model}" == key, res.explain()
    assert res.step.startswith(step), res.explain()
    assert (res.geo, res.region) == (geo, region)
    assert name in res.explain() and key in res.explain()


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("no-such-model", None),
        ("gpt-4o", "anthropic"),
        ("us.anthropic.claude-9-v1:0", None),
        ("anthropic.claude-9-v1:0", "bedrock"),
    ],
)
def test_unresolvable_names_say_why(name: str, hint: str | None) -> None:
    res = BOOK.resolve(name, hint)
    assert not res.found
    assert "no model in the price book" in res.explain()


def test_bedrock_prices_are_not_chosen_for_plain_names() -> None:
    # nova-pro exists only on Bedrock; a plain name still finds it (only candidate) ...
    assert BOOK.resolve("amazon.nova-pro-v1:0").provider == "bedrock"
    # ... but when a vendor price exists, a plain name never lands on Bedrock
    assert BOOK.resolve("gpt-oss-120b").provider == "openai"
    assert BOOK.resolve("openai.gpt-oss-120b-1:0").provider == "bedrock"


def test_tie_rule_is_shortest_then_lexicographic_never_insertion_order() -> None:
    def v(provider: str, model: str) -> PriceVersion:
        return PriceVersion(provider, model, {Dim.INPUT: Decimal(1)}, source="test")

    forward = PriceBook([v("zeta", "widget-2"), v("alpha", "widget-2"), v("alpha", "widget-2-20250101")])
    backward = PriceBook(list(reversed(forward.all_versions())))
    for book in (forward, backward):
        res = book.resolve("widget-2-20990101")
        assert (res.provider, res.model) == ("alpha", "widget-2")
        assert res.candidates == ("alpha/widget-2", "zeta/widget-2", "alpha/widget-2-20250101")
        assert "tie rule" in res.explain()
        assert book.resolve("widget-2-20990101", "zeta").provider == "zeta"


def test_a_moving_alias_follows_its_newest_carrier() -> None:
    t1, t2 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)
    old = PriceVersion(
        "acme",
        "m-1",
        {Dim.INPUT: Decimal(1)},
        source="t",
        layer=Layer.LIVE,
        fetched_at=t1,
        aliases=("acme/m-latest",),
    )
    new = PriceVersion(
        "acme",
        "m-2",
        {Dim.INPUT: Decimal(2)},
        source="t",
        layer=Layer.LIVE,
        fetched_at=t2,
        aliases=("acme/m-latest",),
    )
    assert PriceBook([old, new]).resolve("acme/m-latest").model == "m-2"
    assert PriceBook([new, old]).resolve("acme/m-latest").model == "m-2"


def test_resolution_cache_is_cleared_when_the_book_changes() -> None:
    book = load_bundled_book()
    assert not book.resolve("acme-custom").found
    book.add(PriceVersion("custom", "acme-custom", {Dim.INPUT: Decimal(1)}, source="test"))
    assert book.resolve("acme-custom").model == "acme-custom"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4.5", "claude-sonnet-4-5"),
        ("anthropic/claude-sonnet-4.5", "claude-sonnet-4-5"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gemini-2.5-pro-preview-05-06", "gemini-2-5-pro-preview"),
        ("amazon.nova-pro-v1:0", "amazon-nova-pro"),
        ("openai/gpt-4o:batch", "gpt-4o"),
        ("~openai/gpt-latest", "gpt-latest"),
    ],
)
def test_normalise(raw: str, normal: str) -> None:
    assert normalise(raw) == normal


def test_bedrock_parsing_and_hints() -> None:
    assert parse_bedrock("gpt-4o", hinted=False) is None
    assert parse_bedrock("meta.llama3-3-70b-instruct-v1:0", hinted=False) is not None
    parsed = parse_bedrock("jp.anthropic.claude-sonnet-4-5-20250929-v1:0", hinted=False)
    assert parsed is not None and parsed.geo == "jp"
    assert provider_hint("Gemini") == "google"
    assert provider_hint("mistral") == "mistralai"
    assert provider_hint("openrouter") is None
    assert provider_hint("litellm") is None
