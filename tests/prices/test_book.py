"""The book: merge precedence, adjustments, Bedrock geography/region, service tiers, the loader."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import jevons
from jevons.config import ConfigError
from jevons.prices.book import Adjustment, PriceBook
from jevons.prices.loader import default_book, load_bundled_book, reset_default_book
from jevons.prices.model import Dim, Layer, PriceVersion, ServiceTier
from jevons.prices.resolve import Resolution
from jevons.usage import Usage

M = Decimal("0.000001")
CLAUDE = "anthropic.claude-sonnet-4-5-20250929-v1:0"
U = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
SMALL = Usage(input_tokens=100_000, output_tokens=100_000)  # below Claude's 200K long-context tier


def version(
    layer: Layer,
    price: int,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    provider: str = "openai",
    model: str = "gpt-4o",
) -> PriceVersion:
    return PriceVersion(
        provider,
        model,
        {Dim.INPUT: price * M, Dim.OUTPUT: price * M},
        source=layer.name.lower(),
        layer=layer,
        valid_from=start,
        valid_to=end,
    )


def test_precedence_is_override_over_live_over_bundled_per_interval() -> None:
    jan, mar, may = (datetime(2026, m, 1, tzinfo=UTC) for m in (1, 3, 5))
    book = load_bundled_book()
    book.extend([version(Layer.LIVE, 7, start=mar), version(Layer.OVERRIDE, 1, start=jan, end=mar)])
    assert book.cost("gpt-4o", U, at=datetime(2025, 12, 1, tzinfo=UTC)).total_usd == Decimal(
        "12.5"
    )  # bundled
    assert book.cost("gpt-4o", U, at=datetime(2026, 2, 1, tzinfo=UTC)).total_usd == Decimal(2)  # override
    assert book.cost("gpt-4o", U, at=may).total_usd == Decimal(14)  # live
    assert book.cost("gpt-4o", U).total_usd == Decimal(14)
    assert book.cost("gpt-4o", U).source == "live"


def test_adjustment_applies_to_live_and_bundled_not_to_overrides() -> None:
    book = load_bundled_book()
    book.add_adjustment(Adjustment(Decimal("0.88"), provider="bedrock", label="AWS -12%"))
    base = load_bundled_book().cost(f"us.{CLAUDE}", SMALL, provider="bedrock")
    cut = book.cost(f"us.{CLAUDE}", SMALL, provider="bedrock")
    assert base.total_usd is not None and cut.total_usd == base.total_usd * Decimal("0.88")
    assert cut.price_version and cut.price_version.endswith("*AWS -12%")
    assert book.cost("gpt-4o", U).total_usd == Decimal("12.5")  # other providers untouched
    book.add(version(Layer.OVERRIDE, 1, provider="bedrock", model=CLAUDE))
    for name in (CLAUDE, f"us.{CLAUDE}", f"global.{CLAUDE}"):
        negotiated = book.cost(name, SMALL, provider="bedrock", region="eu-west-1")
        assert negotiated.total_usd == Decimal("0.2"), name
        assert negotiated.source == "override"


def test_bedrock_geography_and_region_pick_the_right_variant() -> None:
    book = load_bundled_book()
    regional = book.cost(f"us.{CLAUDE}", SMALL)
    global_ = book.cost(f"global.{CLAUDE}", SMALL)
    assert regional.total_usd == Decimal("0.33") + Decimal("1.65")  # regional = global x 1.1
    assert global_.total_usd == Decimal("0.3") + Decimal("1.5")
    assert regional.status == global_.status == "priced"  # same price in every region: no estimate
    nova_eu = book.cost("amazon.nova-pro-v1:0", U, provider="bedrock", region="eu-west-1")
    nova_us = book.cost("amazon.nova-pro-v1:0", U, provider="bedrock", region="us-west-2")
    assert (nova_eu.region, nova_us.region) == ("eu-west-1", "us-west-2")
    assert nova_eu.total_usd is not None and nova_us.total_usd is not None
    assert nova_eu.total_usd > nova_us.total_usd
    assert book.cost("eu.amazon.nova-pro-v1:0", U).total_usd == nova_eu.total_usd
    unknown_region = book.cost("amazon.nova-pro-v1:0", U, provider="bedrock")
    assert unknown_region.status == "estimated"
    assert "no region given" in unknown_region.notes[0]
    arn = book.cost(f"arn:aws:bedrock:eu-central-1:1:inference-profile/eu.{CLAUDE}", U)
    assert arn.region == "eu-central-1"


def test_bedrock_long_context_and_cache_prices_are_captured() -> None:
    book = load_bundled_book()
    usage = Usage(
        input_tokens=300_000, cache_read_tokens=100_000, cache_write_1h_tokens=50_000, output_tokens=10
    )
    cost = book.cost(f"global.{CLAUDE}", usage)
    lines = {x.dimension: x.usd_per_token for x in cost.lines}
    assert cost.tier_threshold == 200_000
    assert lines == {
        "input": 6 * M,
        "cache_read": Decimal("0.6") * M,
        "cache_write_1h": 12 * M,
        "output": Decimal("22.5") * M,
    }
    opus = book.cost("us.anthropic.claude-opus-4-7", Usage(input_tokens=10, cache_write_5m_tokens=10))
    assert {x.dimension: x.usd_per_token for x in opus.lines} == {"cache_write_5m": Decimal("6.875") * M}


def test_service_tiers_are_price_variants() -> None:
    book = load_bundled_book()
    standard = book.cost("claude-sonnet-4.5", U)
    batch = book.cost("claude-sonnet-4.5", U, tier="batch")
    assert batch.service_tier == "batch"
    assert standard.total_usd is not None and batch.total_usd == standard.total_usd / 2
    flex = book.cost("amazon.nova-pro-v1:0", U, provider="bedrock", tier="flex", region="us-east-1")
    assert flex.service_tier == "flex" and flex.status == "priced"
    missing = book.cost("gpt-4o", U, tier="priority")
    assert missing.status == "estimated"
    assert "no priority price" in missing.notes[0]
    assert book.cost("gpt-4o", U, tier="default").status == "priced"  # OpenAI's name for standard
    odd = book.cost("gpt-4o", U, tier="gold")  # never an error on the customer's call
    assert odd.status == "estimated" and "unknown service tier" in odd.notes[0]
    assert odd.total_usd == Decimal("12.5")


def test_versions_keep_source_fetch_time_and_id() -> None:
    book = load_bundled_book()
    _, v, _ = book.lookup("o3")
    assert v is not None
    assert v.valid_from == datetime(2025, 6, 10, tzinfo=UTC)
    assert v.fetched_at == datetime(2026, 8, 19, tzinfo=UTC)
    assert v.version_id.startswith("openrouter:openai/o3:standard:20250610:")
    history = book.versions("openai", "o3")
    assert any(h.source == "history" and h.valid_to == v.valid_from for h in history)


def test_default_book_is_built_once_and_thread_safe() -> None:
    seen: list[int] = []

    def grab() -> None:
        seen.append(id(default_book()))

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and len(set(seen)) == 1  # every thread got a book, the same one
    first = jevons.default_book()
    assert first is default_book() and id(first) == seen[0]
    reset_default_book()
    assert default_book() is not first  # held: an id could be reused once the old book is freed


def test_jevons_cost_uses_the_default_book() -> None:
    cost = jevons.cost("gpt-4o-2024-08-06", Usage(input_tokens=1000, output_tokens=100), provider="openai")
    assert cost.total_usd == Decimal("0.0035")
    assert cost.status == "priced"


def test_default_book_reads_overrides_and_fallback_from_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = tmp_path / "prices.toml"
    overrides.write_text(
        """
[[prices]]
provider = "anthropic"
model = "claude-sonnet-4-5-20250929"
input = 2.5
output = 12

[[prices]]
model = "acme-ft-1"
input = "0.5"
output = "1.5"

[[adjustments]]
provider = "bedrock"
percent = -12
"""
    )
    monkeypatch.setenv("JEVONS_PRICES__OVERRIDES_FILE", str(overrides))
    monkeypatch.setenv("JEVONS_PRICES__FALLBACK_MODEL", "gpt-4o-mini")
    book = default_book()
    negotiated = book.cost("anthropic/claude-sonnet-4.5", U)  # any name of the model gets the rate
    assert negotiated.total_usd == Decimal("14.5")
    assert negotiated.source == "override"
    assert book.cost("acme-ft-1", U).total_usd == Decimal(2)
    bedrock = book.cost(f"global.{CLAUDE}", SMALL)
    assert bedrock.total_usd == Decimal("1.8") * Decimal("0.88")
    unknown = book.cost("totally-unknown", U)
    assert unknown.status == "estimated" and unknown.model == "gpt-4o-mini"


def test_bad_overrides_and_fallback_are_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[prices]]\nmodel = "x"\ninput = -1\n')
    monkeypatch.setenv("JEVONS_PRICES__OVERRIDES_FILE", str(bad))
    with pytest.raises(ConfigError, match="negative"):
        default_book()
    monkeypatch.delenv("JEVONS_PRICES__OVERRIDES_FILE")
    monkeypatch.setenv("JEVONS_PRICES__FALLBACK_MODEL", "no-such-model")
    with pytest.raises(ConfigError, match="fallback_model"):
        default_book()


def test_service_tier_enum_round_trips() -> None:
    v = version(Layer.LIVE, 3)
    again = PriceVersion.from_dict(v.to_dict())
    assert again == v and again.service_tier is ServiceTier.STANDARD


def test_a_scheduled_price_takes_over_by_itself() -> None:
    book = load_bundled_book()
    book.cost("gpt-4o", U)  # warm the current-price caches
    soon = datetime.now(UTC) + timedelta(seconds=1)
    book.add(version(Layer.OVERRIDE, 1, start=soon))
    assert book.cost("gpt-4o", U).total_usd == Decimal("12.5")  # not yet in force
    assert book.cost("gpt-4o", U, at=soon).total_usd == Decimal(2)
    time.sleep(max((soon - datetime.now(UTC)).total_seconds(), 0) + 0.05)
    assert book.cost("gpt-4o", U).total_usd == Decimal(2)  # the cached current price rolled over


def test_a_lookup_racing_a_price_change_does_not_cache_the_old_price() -> None:
    """A call priced while another thread adds a price looks again: the old price must not
    stay in the hot cache, which lives until the next change."""
    book = PriceBook([version(Layer.BUNDLED, 1)])
    assert book.cost("gpt-4o", U).total_usd == Decimal(2)  # warms the current-price cache
    cache = book._current_cache

    class AddsMeanwhile(dict[tuple[object, ...], tuple[PriceVersion | None, tuple[str, ...]]]):
        def get(self, key: Any, default: Any = None) -> Any:
            hit = super().get(key, default)  # read before the change...
            if hit is not None and not racing:
                racing.append(True)
                book.add(version(Layer.OVERRIDE, 3))  # ...which lands before the cache write
            return hit

    racing: list[bool] = []
    book._current_cache = AddsMeanwhile(cache)
    # another spelling: a current-cache hit, read just before the change
    assert book.cost("gpt-4o", U, provider="openai").total_usd == Decimal(6)
    assert racing
    assert book.cost("gpt-4o", U, provider="openai").total_usd == Decimal(6)


def test_a_resolution_racing_a_new_model_does_not_cache_the_old_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    book = PriceBook([version(Layer.BUNDLED, 1, model="gpt-4o-2024-08-06")])
    resolve = book.resolve
    racing: list[bool] = []

    def resolve_then_add(name: str, provider: str | None = None) -> Resolution:
        res = resolve(name, provider)  # the dated model, by normalised name...
        if not racing:
            racing.append(True)
            book.add(version(Layer.BUNDLED, 3))  # ...while the exact gpt-4o arrives
        return res

    monkeypatch.setattr(book, "resolve", resolve_then_add)
    racing_cost = book.cost("gpt-4o", U)
    assert racing
    cost = book.cost("gpt-4o", U)
    assert (racing_cost.model, racing_cost.total_usd) == ("gpt-4o", Decimal(6))
    assert (cost.model, cost.total_usd) == ("gpt-4o", Decimal(6))
