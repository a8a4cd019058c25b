"""Fixtures for the capture tests: the replay server, a small price book, a Meter.

- ``replay``: one ``ReplayServer`` per session on 127.0.0.1, routes and recorded requests reset
  before each test. Script it with ``replay.on(path, reply)``.
- ``test_book``: a ``PriceBook`` of the few models the capture tests call (``TEST_PRICES``;
  USD per million tokens as strings, turned into exact per-token Decimals).
- ``meter``: ``Meter(book=test_book, ledger="memory")``, closed after the test.
- ``list_price_meter``: the same over the default price book (``list_price_book``), for the
  adapter tests that check costs against the providers' published prices; a test module
  opts in by overriding its ``meter`` with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from jevons.capture.meter import Meter
from jevons.config import Settings
from jevons.prices.book import PriceBook
from jevons.prices.loader import default_book
from jevons.prices.model import Dim, PriceVersion
from replay import ReplayServer

MILLION = Decimal(1_000_000)

# (provider, model, {dimension: USD per million tokens})
TEST_PRICES: list[tuple[str, str, dict[Dim, str]]] = [
    ("openai", "gpt-4o-mini", {Dim.INPUT: "0.15", Dim.CACHE_READ: "0.075", Dim.OUTPUT: "0.60"}),
    ("openai", "gpt-4o", {Dim.INPUT: "2.50", Dim.CACHE_READ: "1.25", Dim.OUTPUT: "10"}),
    ("openai", "o4-mini", {Dim.INPUT: "1.10", Dim.CACHE_READ: "0.275", Dim.OUTPUT: "4.40"}),
    ("openai", "gpt-4o-audio-preview", {Dim.INPUT: "2.50", Dim.OUTPUT: "10", Dim.AUDIO_INPUT: "40",
                                        Dim.AUDIO_OUTPUT: "80"}),
    ("openai", "gpt-image-1", {Dim.INPUT: "5", Dim.IMAGE_INPUT: "10", Dim.OUTPUT: "10",
                               Dim.IMAGE_OUTPUT: "40"}),
    ("anthropic", "claude-sonnet-4", {Dim.INPUT: "3", Dim.CACHE_READ: "0.30", Dim.CACHE_WRITE_5M: "3.75",
                                      Dim.CACHE_WRITE_1H: "6", Dim.OUTPUT: "15"}),
    ("anthropic", "claude-3-5-haiku", {Dim.INPUT: "0.80", Dim.CACHE_READ: "0.08", Dim.CACHE_WRITE_5M: "1",
                                       Dim.CACHE_WRITE_1H: "1.6", Dim.OUTPUT: "4"}),
    ("google", "gemini-2.5-flash", {Dim.INPUT: "0.30", Dim.CACHE_READ: "0.075", Dim.OUTPUT: "2.50",
                                    Dim.AUDIO_INPUT: "1"}),
    ("mistralai", "mistral-large-latest", {Dim.INPUT: "2", Dim.OUTPUT: "6"}),
    ("mistralai", "mistral-small-latest", {Dim.INPUT: "0.10", Dim.OUTPUT: "0.30"}),
]


def per_token(usd_per_million: str) -> Decimal:
    return Decimal(usd_per_million) / MILLION


def make_test_book(extra: list[tuple[str, str, dict[Dim, str]]] | None = None) -> PriceBook:
    versions = [
        PriceVersion(
            provider=provider, model=model,
            rates={dim: per_token(rate) for dim, rate in rates.items()},
            source="test", valid_from=datetime(2024, 1, 1, tzinfo=UTC),
        )
        for provider, model, rates in [*TEST_PRICES, *(extra or [])]
    ]
    return PriceBook(versions)


@pytest.fixture(scope="session")
def _replay_server() -> Iterator[ReplayServer]:
    server = ReplayServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def replay(_replay_server: ReplayServer) -> ReplayServer:
    _replay_server.reset()
    return _replay_server


@pytest.fixture
def test_book() -> PriceBook:
    return make_test_book()


@pytest.fixture
def meter(test_book: PriceBook) -> Iterator[Meter]:
    m = Meter(book=test_book, ledger="memory")
    try:
        yield m
    finally:
        m.close()


@pytest.fixture(scope="session")
def list_price_book() -> PriceBook:
    return default_book()


@pytest.fixture
def list_price_meter(list_price_book: PriceBook) -> Iterator[Meter]:
    with Meter(book=list_price_book, ledger="memory") as m:
        yield m


@pytest.fixture
def durable_settings(tmp_path: Path) -> Settings:
    """Settings of a durable SQLite ledger in a fresh home (the deferred-capture tests)."""
    from ledger.helpers import settings_for

    return settings_for("sqlite", home=str(tmp_path / "home"))


@pytest.fixture
def durable_meter(durable_settings: Settings) -> Iterator[Callable[[PriceBook], Meter]]:
    """``durable_meter(book)``: a meter over the durable ledger of ``durable_settings`` (no
    policy), closed after the test."""
    made: list[Meter] = []

    def make(book: PriceBook) -> Meter:
        made.append(Meter(book=book, settings=durable_settings, policy=False))
        return made[-1]

    yield make
    for m in made:
        m.close()
