"""Sources fetched over real HTTP; conditional requests; guard and quarantine; failures."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from jevons.config import load_settings
from jevons.prices.book import PriceBook
from jevons.prices.loader import build_book, default_book, load_bundled_book
from jevons.prices.model import Dim
from jevons.prices.refresh import BackgroundRefresher, accept, refresh
from jevons.prices.sources import bedrock, openrouter
from jevons.prices.store import PriceStore
from jevons.usage import Usage

from .conftest import SHARED, MutableServer

M = Decimal("0.000001")
T0 = datetime(2026, 9, 1, tzinfo=UTC)
U = Usage(input_tokens=1_000_000, output_tokens=1_000_000)


def test_first_update_from_the_real_sources_confirms_the_bundled_snapshot(shared_data_server: str) -> None:
    settings = load_settings()
    steps: list[tuple[str, int, int]] = []
    report = refresh(
        settings,
        openrouter_url=shared_data_server,
        bedrock_url=shared_data_server,
        progress=lambda d, c, t: steps.append((d, c, t)),
        now=T0,
    )
    assert report.ok
    by_name = {s.name: s for s in report.sources}
    assert by_name["openrouter"].versions == 533
    assert by_name["bedrock"].versions == 173
    assert by_name["openrouter"].status == by_name["bedrock"].status == "updated"
    assert report.changes == []  # the bundled snapshot was built from the same data
    assert report.quarantined == []
    assert steps[-1][1] == steps[-1][2]  # the bedrock progress completes (2 indexes + 10 offers)
    assert max(t for _, _, t in steps) == 12
    assert PriceStore(settings.home_dir).state()["sources"]["bedrock"]["last_success_at"] == T0.isoformat()


def test_second_update_uses_conditional_requests(openrouter_server: MutableServer) -> None:
    settings = load_settings()
    refresh(settings, sources=["openrouter"], openrouter_url=openrouter_server.url, now=T0)
    second = refresh(
        settings, sources=["openrouter"], openrouter_url=openrouter_server.url, now=T0 + timedelta(hours=2)
    )
    assert openrouter_server.requests[1].get("if-none-match")
    assert openrouter_server.not_modified == 1
    assert second.sources[0].status == "unchanged"
    assert second.sources[0].versions == 533  # re-read from the stored body


def test_a_price_change_closes_the_old_version_and_is_used_from_the_fetch(
    openrouter_server: MutableServer,
) -> None:
    settings = load_settings()
    openrouter_server.set_price("openai/gpt-4o", prompt="0.000002", completion="0.000008")
    book = load_bundled_book()
    report = refresh(
        settings, sources=["openrouter"], openrouter_url=openrouter_server.url, book=book, now=T0
    )
    assert [(c["kind"], c["key"]) for c in report.changes] == [("changed", "openai/gpt-4o")]
    assert report.changes[0]["old"]["input"] == "0.0000025"
    assert report.changes[0]["new"]["input"] == "0.000002"
    assert book.cost("gpt-4o", U).total_usd == Decimal(10)
    assert book.cost("gpt-4o", U, at=T0 - timedelta(days=1)).total_usd == Decimal("12.5")
    assert book.cost("gpt-4o", U, at=datetime(2024, 9, 1, tzinfo=UTC)).total_usd == Decimal(20)  # history
    # a second move: the first live version is closed where the second starts
    openrouter_server.set_price("openai/gpt-4o", prompt="0.0000021")
    later = T0 + timedelta(days=3)
    refresh(settings, sources=["openrouter"], openrouter_url=openrouter_server.url, book=book, now=later)
    live = [v for v in PriceStore(settings.home_dir).load_live() if v.model == "gpt-4o"]
    assert [(v.valid_from, v.valid_to) for v in live] == [(T0, later), (later, None)]
    assert book.cost("gpt-4o", U, at=T0 + timedelta(days=1)).total_usd == Decimal(10)
    assert book.cost("gpt-4o", U).total_usd == Decimal("10.1")
    # a new process sees the same book from the cache, without network
    fresh = build_book(settings)
    assert fresh.cost("gpt-4o", U).total_usd == Decimal("10.1")
    assert fresh.cost("gpt-4o", U, at=T0 + timedelta(days=1)).total_usd == Decimal(10)
    assert "openai/gpt-4o" in json.dumps(PriceStore(settings.home_dir).diff())


def test_a_big_move_is_quarantined_until_accepted(openrouter_server: MutableServer) -> None:
    settings = load_settings()
    openrouter_server.set_price("anthropic/claude-sonnet-4.5", prompt="0.00003")  # 10x
    book = load_bundled_book()
    report = refresh(
        settings, sources=["openrouter"], openrouter_url=openrouter_server.url, book=book, now=T0
    )
    [item] = report.quarantined
    assert item["key"] == "anthropic/claude-sonnet-4.5"
    assert "input 0.000003 -> 0.00003" in item["reason"]
    assert report.changes[0]["kind"] == "quarantined"
    assert book.cost("claude-sonnet-4.5", Usage(input_tokens=1000)).total_usd == Decimal(
        "0.003"
    )  # not applied
    assert PriceStore(settings.home_dir).quarantine()[0]["id"] == item["id"]
    result = accept(settings, [item["id"]], book=book)
    assert result.accepted and not result.refused
    assert book.cost("claude-sonnet-4.5", Usage(input_tokens=1000)).total_usd == Decimal("0.03")
    assert book.cost(
        "claude-sonnet-4.5", Usage(input_tokens=1000), at=T0 - timedelta(seconds=1)
    ).total_usd == (Decimal("0.003"))
    assert PriceStore(settings.home_dir).quarantine() == []
    assert build_book(settings).cost("claude-sonnet-4.5", Usage(input_tokens=1000)).total_usd == Decimal(
        "0.03"
    )


def test_negative_and_non_numeric_prices_are_quarantined_and_cannot_be_accepted(
    openrouter_server: MutableServer,
) -> None:
    settings = load_settings()
    openrouter_server.set_price("openai/gpt-4o", prompt="-0.000001")
    openrouter_server.set_price("openai/o3", completion="cheap")
    openrouter_server.set_price("openai/gpt-4o-mini", prompt="0")  # to zero: an unbounded move
    book = load_bundled_book()
    report = refresh(
        settings, sources=["openrouter"], openrouter_url=openrouter_server.url, book=book, now=T0
    )
    kinds = sorted((q["kind"], q["key"]) for q in report.quarantined)
    assert kinds == [
        ("invalid", "openai/gpt-4o prompt"),
        ("invalid", "openai/o3 completion"),
        ("move", "openai/gpt-4o-mini"),
    ]
    assert book.cost("gpt-4o", U).total_usd == Decimal("12.5")
    assert book.cost("gpt-4o-mini", U).total_usd == Decimal("0.75")
    result = accept(settings, None, book=book)
    assert len(result.refused) == 2 and len(result.accepted) == 1
    assert {i["kind"] for i in PriceStore(settings.home_dir).quarantine()} == {"invalid"}


def test_a_failed_fetch_keeps_the_last_good_book_and_reports_its_age(
    openrouter_server: MutableServer,
) -> None:
    settings = load_settings()
    openrouter_server.set_price("openai/gpt-4o", prompt="0.000002")
    book = load_bundled_book()
    refresh(settings, sources=["openrouter"], openrouter_url=openrouter_server.url, book=book, now=T0)
    openrouter_server.status = 503
    failed = refresh(
        settings,
        sources=["openrouter"],
        openrouter_url=openrouter_server.url,
        book=book,
        now=T0 + timedelta(hours=5),
    )
    assert not failed.ok
    assert failed.sources[0].status == "failed"
    assert "503" in (failed.sources[0].error or "")
    assert failed.sources[0].last_success_at == T0.isoformat()
    assert book.cost("gpt-4o", Usage(input_tokens=1_000_000)).total_usd == Decimal(2)
    unreachable = refresh(settings, sources=["openrouter"], openrouter_url="http://127.0.0.1:9", now=T0)
    assert unreachable.sources[0].status == "failed"
    assert build_book(settings).cost("gpt-4o", Usage(input_tokens=1_000_000)).total_usd == Decimal(2)


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown price source"):
        refresh(load_settings(), sources=["litellm"])


def test_background_refresh_merges_into_the_default_book(
    openrouter_server: MutableServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    openrouter_server.set_price("openai/gpt-4o", prompt="0.000002")
    monkeypatch.setenv("JEVONS_PRICES__AUTO_REFRESH", "true")
    monkeypatch.setenv("JEVONS_PRICES__SOURCES", '["openrouter"]')
    monkeypatch.setenv("JEVONS_PRICES__OPENROUTER_URL", openrouter_server.url)
    book = default_book()  # returns at once; the refresh runs in the background
    deadline = time.monotonic() + 10
    while book.cost("gpt-4o", Usage(input_tokens=1_000_000)).total_usd != Decimal(2):
        assert time.monotonic() < deadline, "background refresh did not land"
        time.sleep(0.02)
    assert len(openrouter_server.requests) == 1  # fresh within the TTL: no second fetch


def test_refresher_respects_the_ttl(
    openrouter_server: MutableServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JEVONS_PRICES__OPENROUTER_URL", openrouter_server.url)
    monkeypatch.setenv("JEVONS_PRICES__SOURCES", '["openrouter"]')
    settings = load_settings()
    refresh(settings, now=datetime.now(UTC))
    refresher = BackgroundRefresher(settings, PriceBook())
    age = refresher.age_seconds()
    assert age is not None and age < 60
    checked = threading.Event()
    real_age = refresher.age_seconds

    def age_then_signal() -> float | None:
        seen = real_age()
        checked.set()
        return seen

    monkeypatch.setattr(refresher, "age_seconds", age_then_signal)
    refresher.start()
    assert checked.wait(10), "the refresher never checked the cache age"
    refresher.stop()  # joins the thread: its decision after the age check has been acted on
    assert refresher.last_report is None
    assert len(openrouter_server.requests) == 1  # the cache is fresh: nothing fetched


def test_parsers_read_the_shared_snapshots() -> None:
    parsed = openrouter.parse_models(
        json.loads((SHARED / "openrouter" / "models-2026-08-19.json").read_text()), fetched_at=T0
    )
    assert parsed.invalid == []
    assert all(s.startswith("openrouter/") for s in parsed.skipped)  # routers with a -1 price
    gemini = next(
        v for v in parsed.versions if v.model == "gemini-3.7-flash" and v.service_tier.value == "standard"
    )
    assert Dim.REASONING not in gemini.rates  # internal_reasoning == completion: billed as output
    assert gemini.rates[Dim.AUDIO_INPUT] == Decimal("0.000000375")
    seedream = next(v for v in parsed.versions if v.model == "seedream-5-0-pro")
    assert Dim.IMAGE_INPUT not in seedream.rates  # 0.003 is per image, not per token
    assert seedream.extra["image"] == "0.003"
    deepseek = next(v for v in parsed.versions if v.model == "deepseek-v4-pro")
    assert deepseek.tiers == () and deepseek.extra["time_of_day_overrides"] == "4"
    names = bedrock.name_map(json.loads((SHARED / "bedrock" / "models.json").read_text()))
    offer = json.loads(
        (SHARED / "bedrock/offers/v1.0/aws/AmazonBedrock/20260801000000/us-east-1/index.json").read_text()
    )
    skus = bedrock.parse_offer(offer, names).skus
    assert {s.model for s in skus} >= {"amazon.nova-pro-v1:0", "amazon.titan-embed-text-v1"}
    titan = [s for s in skus if s.model == "amazon.titan-embed-text-v1"]
    assert [(s.dim, s.price) for s in titan] == [(Dim.INPUT, Decimal("1E-7"))]  # 1K-token unit
    assert not any("Provisioned" in s.model or "Guardrails" in s.model for s in skus)


def test_unmapped_bedrock_names_are_priced_under_a_derived_id(tmp_path: Path) -> None:
    offer = json.loads(
        (
            SHARED / "bedrock/offers/v1.0/aws/AmazonBedrockFoundationModels/20260801000000/"
            "us-east-1/index.json"
        ).read_text()
    )
    parsed = bedrock.parse_offer(offer, {})
    assert any("unmapped" in s for s in parsed.skipped)
    assert "anthropic.claude-opus-4.7" in {s.model for s in parsed.skus}


def test_live_prices_older_than_the_bundled_snapshot_give_way_to_it() -> None:
    settings = load_settings()
    store = PriceStore(settings.home_dir)
    _, bundled, _ = load_bundled_book().lookup("gpt-4o")
    assert bundled is not None and bundled.fetched_at is not None
    old_fetch = bundled.fetched_at - timedelta(days=30)
    stale = bundled.with_validity(old_fetch, None)
    stale = type(stale)(
        **{
            **{f: getattr(stale, f) for f in stale.__slots__},
            "layer": stale.layer.LIVE,
            "rates": {Dim.INPUT: 9 * M, Dim.OUTPUT: 9 * M},
            "fetched_at": old_fetch,
            "version_id": "",
        }
    )
    store.save_live([stale])
    book = build_book(settings)
    assert book.cost("gpt-4o", U, at=old_fetch + timedelta(days=1)).total_usd == Decimal(18)  # live then
    assert book.cost("gpt-4o", U).total_usd == Decimal("12.5")  # the newer bundled price now
