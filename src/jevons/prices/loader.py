"""The process-wide price book: bundled snapshot + cached live prices + user overrides.

``default_book()`` builds it once, lazily and thread-safely, from:

1. the snapshot bundled in the package (offline default; first run works without network),
2. the live prices cached in ``JEVONS_HOME/prices`` by earlier refreshes (if any),
3. the user overrides file (``[prices] overrides_file``),
4. the fallback price class (``[prices] fallback_model``): the price of that model, applied to
   unknown models and flagged ``estimated``.

With ``[prices] auto_refresh = true`` a daemon thread refreshes the live prices when they are
older than ``ttl_seconds`` and merges them into the same book object
(stale-while-revalidate: lookups keep answering from the prices in hand meanwhile). Lookups
never do network I/O.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING

from jevons.prices.book import PriceBook
from jevons.prices.model import PriceVersion

if TYPE_CHECKING:  # config (pydantic) loads only when settings are read, not for the bundled book
    from jevons.config import Settings
    from jevons.prices.refresh import BackgroundRefresher

__all__ = [
    "build_book",
    "default_book",
    "load_bundled_book",
    "reset_default_book",
]

_lock = threading.Lock()
_book: PriceBook | None = None
_refresher: BackgroundRefresher | None = None


@lru_cache(maxsize=1)
def _bundled_versions() -> tuple[PriceVersion, ...]:
    from jevons.prices.snapshot import read_bundled

    versions, _ = read_bundled()
    return tuple(versions)


def load_bundled_book() -> PriceBook:
    """A new book holding only the bundled snapshot (no live prices, no overrides)."""
    return PriceBook(_bundled_versions())


def build_book(settings: Settings) -> PriceBook:
    """Bundled + cached live + overrides + fallback, for ``settings`` (no network)."""
    from jevons.config import ConfigError
    from jevons.prices.overrides import OverridesError, load_overrides
    from jevons.prices.store import PriceStore

    book = PriceBook(_bundled_versions())
    book.extend(_live_behind_bundled(PriceStore(settings.home_dir).load_live()))
    if settings.prices.overrides_file:
        def resolver(name: str, provider: str | None) -> tuple[str, str] | None:
            res = book.resolve(name, None if provider == "custom" else provider)
            return (res.provider, res.model) if res.provider and res.model else None

        try:
            overrides = load_overrides(settings.prices.overrides_file, resolver=resolver)
        except OverridesError as exc:
            raise ConfigError(str(exc)) from exc
        book.extend(overrides.versions)
        for adjustment in overrides.adjustments:
            book.add_adjustment(adjustment)
    if settings.prices.fallback_model:
        set_fallback(book, settings.prices.fallback_model)
    return book


def _live_behind_bundled(live: list[PriceVersion]) -> list[PriceVersion]:
    """Cached live prices older than the bundled snapshot (after a jevons upgrade) give way to
    it: an open live version is closed where the newer bundled price was fetched."""
    newer: dict[tuple[object, ...], datetime] = {}
    for v in _bundled_versions():
        if v.valid_to is None and v.fetched_at is not None:
            newer[v.key] = v.fetched_at
    out = []
    for v in live:
        cut = newer.get(v.key)
        if (
            cut is not None and v.valid_to is None and v.fetched_at is not None and v.fetched_at < cut
            and (v.valid_from is None or v.valid_from < cut)
        ):
            v = replace(v.with_validity(v.valid_from, cut), version_id=v.version_id)
        out.append(v)
    return out


def set_fallback(book: PriceBook, name: str) -> None:
    """Use the current price of ``name`` as the book's fallback price class."""
    from jevons.config import ConfigError

    res, version, _ = book.lookup(name)
    if version is None:
        raise ConfigError(f"prices.fallback_model: {name!r} is not in the price book ({res.step})")
    book.fallback = version


def default_book() -> PriceBook:
    """The process-wide book (built on first use; see the module docstring)."""
    global _book, _refresher
    book = _book
    if book is not None:
        return book
    with _lock:
        if _book is None:
            from jevons.config import load_settings

            settings = load_settings()
            _book = build_book(settings)
            if settings.prices.auto_refresh:
                from jevons.prices.refresh import BackgroundRefresher

                _refresher = BackgroundRefresher(settings, _book)
                _refresher.start()
        return _book


def reset_default_book() -> None:
    """Forget the process-wide book (and stop its refresher); the next use rebuilds it."""
    global _book, _refresher
    with _lock:
        if _refresher is not None:
            _refresher.stop()
        _refresher = None
        _book = None
