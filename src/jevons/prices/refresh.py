"""Refreshing live prices: fetch, guard, apply, remember.

``refresh()`` fetches the sources (conditional requests with the stored ETag / Last-Modified;
a ``304`` re-reads the stored body), compares every fetched price with the last known price of
the same model variant (the open live version, else the bundled one) and then:

- unchanged: nothing is stored (the known version stays in force);
- changed within the guard: the previous live version is closed at the fetch time and the new
  one starts there; a first live version that only confirms the bundled price is not stored;
- moved by more than ``max_move_factor`` (default 5x, either way; to or from zero counts as
  an unbounded move) on any dimension: **quarantined**, not applied, reported; ``jevons
  prices accept`` applies it (from the time it was fetched);
- negative or non-numeric in the source: quarantined as invalid; it can never be accepted.

A source that fails (network, HTTP error, unparsable body) leaves its last good prices in
force; the report names the error and the age of the last success. When a book is passed,
the applied changes are merged into it (lookups never wait: they answer from the prices in
hand until the merge, which is a few dict updates under the book's lock).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx

from jevons.config import Settings
from jevons.prices.book import PriceBook
from jevons.prices.model import Dim, Layer, PriceVersion
from jevons.prices.sources import bedrock, openrouter
from jevons.prices.sources.openrouter import ParsedSource, RawPrice
from jevons.prices.store import PriceStore

__all__ = [
    "SOURCES",
    "AcceptResult",
    "BackgroundRefresher",
    "Progress",
    "RefreshReport",
    "SourceReport",
    "accept",
    "guard_moves",
    "refresh",
]

log = logging.getLogger("jevons.prices")

SOURCES = ("openrouter", "bedrock")
Progress = Callable[[str, int, int], None]  # (description, completed, total)
VariantKey = tuple[str, str, str, str | None, str | None]


def _vkey(v: PriceVersion) -> VariantKey:
    return (v.provider, v.model, v.service_tier.value, v.geo, v.region)


def _label(v: PriceVersion) -> str:
    text = f"{v.provider}/{v.model}"
    if v.service_tier.value != "standard":
        text += f" [{v.service_tier.value}]"
    if v.geo:
        text += f" geo={v.geo}"
    if v.region:
        text += f" @{v.region}"
    return text


def _rates_text(v: PriceVersion | None) -> dict[str, str] | None:
    if v is None:
        return None
    return {d.value: f"{r:f}" for d, r in sorted(v.rates.items())}


@dataclass(slots=True)
class SourceReport:
    name: str
    status: str = "pending"  # updated | unchanged | failed
    versions: int = 0
    error: str | None = None
    skipped: list[str] = field(default_factory=list)
    last_success_at: str | None = None


@dataclass(slots=True)
class RefreshReport:
    started_at: datetime
    sources: list[SourceReport] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.sources)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for change in self.changes:
            out[change["kind"]] = out.get(change["kind"], 0) + 1
        return out


def guard_moves(old: PriceVersion, new: PriceVersion, factor: Decimal) -> list[str]:
    """Dimensions whose price moved by more than ``factor`` (either way) from ``old`` to ``new``."""
    moved = []
    pairs: list[tuple[str, dict[Dim, Decimal], dict[Dim, Decimal]]] = [("", old.rates, new.rates)]
    old_tiers = {t.above_input_tokens: t.rates for t in old.tiers}
    for t in new.tiers:
        if t.above_input_tokens in old_tiers:
            pairs.append((f" (> {t.above_input_tokens} tokens)", old_tiers[t.above_input_tokens], t.rates))
    for where, before, after in pairs:
        for dim, was in before.items():
            now = after.get(dim)
            if now is None or now == was:
                continue
            if was == 0 or now == 0 or now > was * factor or now * factor < was:
                moved.append(f"{dim.value}{where} {was:f} -> {now:f}")
    return moved


class _Fetcher:
    """Conditional GETs through the store's HTTP cache."""

    def __init__(self, client: httpx.Client, store: PriceStore) -> None:
        self.client = client
        self.store = store
        self.fresh = False  # any 200 in this source

    def get_json(self, url: str) -> Any:
        headers: dict[str, str] = {}
        entry = self.store.http_entry(url)
        cached = self.store.http_body(url) if entry else None
        if entry and cached is not None:
            if entry.get("etag"):
                headers["If-None-Match"] = str(entry["etag"])
            if entry.get("last_modified"):
                headers["If-Modified-Since"] = str(entry["last_modified"])
        response = self.client.get(url, headers=headers)
        if response.status_code == 304 and cached is not None:
            body = cached
        else:
            response.raise_for_status()
            body = response.content
            headers_in = response.headers
            self.store.save_http(url, body, headers_in.get("etag"), headers_in.get("last-modified"))
            self.fresh = True
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ValueError(f"{url}: not JSON ({exc})") from exc


def _fetch_openrouter(fetcher: _Fetcher, base: str, now: datetime, progress: Progress) -> ParsedSource:
    progress("OpenRouter models", 0, 1)
    body = fetcher.get_json(base.rstrip("/") + openrouter.PATH)
    progress("OpenRouter models", 1, 1)
    return openrouter.parse_models(body, fetched_at=now, layer=Layer.LIVE)


def _fetch_bedrock(fetcher: _Fetcher, base: str, now: datetime, progress: Progress) -> ParsedSource:
    from jevons.prices.snapshot import bundled_resource

    names = bedrock.name_map(json.loads(bundled_resource("bedrock_models.json")))
    root = base.rstrip("/")
    files: list[str] = []
    total = len(bedrock.OFFERS)
    done = 0
    for offer in bedrock.OFFERS:
        progress(f"Bedrock {offer} region index", done, total)
        index = fetcher.get_json(root + bedrock.region_index_path(offer))
        done += 1
        regional = bedrock.parse_region_index(index)
        files.extend(regional[r] for r in sorted(regional))
        total += len(regional)
    parses = []
    for path in files:
        progress(f"Bedrock {path.split('/')[4]} {path.split('/')[-2]}", done, total)
        url = path if path.startswith("http") else root + path
        parses.append(bedrock.parse_offer(fetcher.get_json(url), names))
        done += 1
    progress("Bedrock offers", done, total)
    return bedrock.merge_offers(parses, fetched_at=now, layer=Layer.LIVE)


def _bundled_current() -> dict[VariantKey, PriceVersion]:
    from jevons.prices.loader import _bundled_versions

    out: dict[VariantKey, PriceVersion] = {}
    for v in _bundled_versions():
        if v.valid_to is None:
            out[_vkey(v)] = v
    return out


def _quarantine_id(item: dict[str, Any]) -> str:
    raw = json.dumps([item["key"], item.get("new"), item.get("reason")], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:10]


def refresh(
    settings: Settings,
    *,
    sources: Iterable[str] | None = None,
    openrouter_url: str | None = None,
    bedrock_url: str | None = None,
    book: PriceBook | None = None,
    progress: Progress | None = None,
    client: httpx.Client | None = None,
    now: datetime | None = None,
) -> RefreshReport:
    """Fetch, guard and apply live prices; see the module docstring."""
    now = now or datetime.now(UTC)
    wanted = list(sources or settings.prices.sources)
    unknown = [s for s in wanted if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown price source(s) {unknown}; choose from {', '.join(SOURCES)}")
    say = progress or (lambda _d, _c, _t: None)
    store = PriceStore(settings.home_dir)
    report = RefreshReport(started_at=now)
    state = store.state()
    own_client = client is None
    http = client or httpx.Client(
        timeout=settings.prices.http_timeout_seconds, follow_redirects=True,
        headers={"User-Agent": "jevons price refresh"},
    )
    fetched: list[tuple[str, ParsedSource]] = []
    try:
        for name in wanted:
            src_state = state.setdefault("sources", {}).setdefault(name, {})
            src = SourceReport(name)
            report.sources.append(src)
            fetcher = _Fetcher(http, store)
            try:
                if name == "openrouter":
                    base = openrouter_url or settings.prices.openrouter_url
                    parsed = _fetch_openrouter(fetcher, base, now, say)
                else:
                    base = bedrock_url or settings.prices.bedrock_url
                    parsed = _fetch_bedrock(fetcher, base, now, say)
            except (httpx.HTTPError, ValueError, KeyError, TypeError, OSError) as exc:
                src.status = "failed"
                src.error = f"{type(exc).__name__}: {exc}"
                src_state["last_error"] = src.error
                src_state["last_error_at"] = now.isoformat()
                src.last_success_at = src_state.get("last_success_at")
                log.info("price source %s failed: %s (keeping last good prices)", name, src.error)
                continue
            src.status = "updated" if fetcher.fresh else "unchanged"
            src.versions = len(parsed.versions)
            src.skipped = list(parsed.skipped)
            src_state["last_success_at"] = now.isoformat()
            src_state.pop("last_error", None)
            src.last_success_at = now.isoformat()
            fetched.append((name, parsed))
    finally:
        if own_client:
            http.close()
    with store.locked():
        _apply(settings, store, fetched, report, now, book)
        merged = store.state()  # another process may have written meanwhile: merge, ours wins
        merged.setdefault("sources", {}).update(state.get("sources", {}))
        merged["last_attempt_at"] = now.isoformat()
        if any(s.status != "failed" for s in report.sources):
            merged["last_success_at"] = now.isoformat()
        store.save_state(merged)
    return report


def _apply(
    settings: Settings,
    store: PriceStore,
    fetched: list[tuple[str, ParsedSource]],
    report: RefreshReport,
    now: datetime,
    book: PriceBook | None,
) -> None:
    live = store.load_live()
    open_live: dict[VariantKey, PriceVersion] = {}
    for v in live:
        if v.valid_to is None:
            open_live[_vkey(v)] = v
    bundled = _bundled_current()
    quarantine = {item["key"]: item for item in store.quarantine()}
    factor = Decimal(settings.prices.max_move_factor)
    closed: list[tuple[PriceVersion, PriceVersion]] = []
    added: list[PriceVersion] = []
    for name, parsed in fetched:
        for raw in parsed.invalid:
            item = _invalid_item(raw, now)
            quarantine[item["key"]] = item
            report.quarantined.append(item)
            report.changes.append({"kind": "invalid", "key": item["key"], "reason": item["reason"]})
        seen: set[VariantKey] = set()
        for new in parsed.versions:
            key = _vkey(new)
            seen.add(key)
            old = open_live.get(key)
            reference = old or bundled.get(key)
            if reference is not None and reference.content_digest() == new.content_digest():
                if old is not None and old.aliases != new.aliases:
                    updated = replace(old, aliases=new.aliases, fetched_at=new.fetched_at)
                    closed.append((old, updated))
                    open_live[key] = updated
                quarantine.pop(_label(new), None)
                continue
            moves = guard_moves(reference, new, factor) if reference is not None else []
            if moves:
                item = {
                    "key": _label(new),
                    "kind": "move",
                    "reason": f"moved more than {factor}x: " + "; ".join(moves),
                    "reference": reference.version_id if reference else None,
                    "old": _rates_text(reference),
                    "new": _rates_text(new),
                    "version": new.to_dict(),
                    "detected_at": now.isoformat(),
                }
                item["id"] = _quarantine_id(item)
                quarantine[item["key"]] = item
                report.quarantined.append(item)
                report.changes.append(
                    {"kind": "quarantined", "key": item["key"], "old": item["old"], "new": item["new"],
                     "reason": item["reason"], "id": item["id"]}
                )
                continue
            quarantine.pop(_label(new), None)
            applied = _start(new, old, bundled.get(key), now)
            if old is not None:
                ended = old.with_validity(old.valid_from, applied.valid_from or now)
                ended = replace(ended, version_id=old.version_id)
                closed.append((old, ended))
            added.append(applied)
            open_live[key] = applied
            report.changes.append({
                "kind": "changed" if reference is not None else "new",
                "key": _label(new),
                "old": _rates_text(reference),
                "new": _rates_text(applied),
                "version": applied.version_id,
            })
        for key, old in sorted(open_live.items(), key=lambda kv: str(kv[0])):
            if old.source == name and key not in seen and old.fetched_at is not None and old.fetched_at < now:
                report.changes.append({"kind": "removed", "key": _label(old), "old": _rates_text(old)})
    if closed or added:
        replaced = {id(old): new for old, new in closed}
        live = [replaced.get(id(v), v) for v in live] + added
        store.save_live(live)
        if book is not None:
            for old, new in closed:
                try:
                    book.replace_version(old, new)
                except ValueError:
                    book.add(new)
            book.extend(added)
    store.save_quarantine(sorted(quarantine.values(), key=lambda i: i["key"]))
    store.save_diff({
        "refreshed_at": now.isoformat(),
        "sources": [{"name": s.name, "status": s.status, "error": s.error} for s in report.sources],
        "changes": report.changes,
    })


def _start(new: PriceVersion, old: PriceVersion | None, bundled: PriceVersion | None,
           now: datetime) -> PriceVersion:
    """When a newly seen live price starts: at the fetch if it replaces a known price, else
    from the start of time (a model seen for the first time was priced so since it exists)."""
    if old is not None or bundled is not None:
        return new.with_validity(now if new.fetched_at is None else new.fetched_at, None)
    return new.with_validity(None, None)


def _invalid_item(raw: RawPrice, now: datetime) -> dict[str, Any]:
    item = {
        "key": f"{raw.key} {raw.field}",
        "kind": "invalid",
        "reason": f"{raw.source}: {raw.field} = {raw.value!r} is {raw.reason}",
        "detected_at": now.isoformat(),
    }
    item["id"] = _quarantine_id(item)
    return item


@dataclass(slots=True)
class AcceptResult:
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def accept(
    settings: Settings, ids: Iterable[str] | None = None, *, book: PriceBook | None = None
) -> AcceptResult:
    """Apply quarantined prices (all when ``ids`` is None), each from the time it was fetched."""
    store = PriceStore(settings.home_dir)
    with store.locked():
        return _accept(store, ids, book)


def _accept(store: PriceStore, ids: Iterable[str] | None, book: PriceBook | None) -> AcceptResult:
    items = store.quarantine()
    wanted = None if ids is None else set(ids)
    result = AcceptResult()
    live = store.load_live()
    keep: list[dict[str, Any]] = []
    closed: list[tuple[PriceVersion, PriceVersion]] = []
    added: list[PriceVersion] = []
    for item in items:
        if wanted is not None and item.get("id") not in wanted and item.get("key") not in wanted:
            keep.append(item)
            continue
        if item.get("kind") != "move" or "version" not in item:
            result.refused.append(
                f"{item.get('id')} {item.get('key')}: {item.get('reason')} (cannot be applied)"
            )
            keep.append(item)
            continue
        new = PriceVersion.from_dict({**item["version"], "layer": "live"})
        start = datetime.fromisoformat(item["detected_at"])
        key = _vkey(new)
        for i, v in enumerate(live):
            if _vkey(v) == key and v.valid_to is None:
                ended = replace(v.with_validity(v.valid_from, start), version_id=v.version_id)
                live[i] = ended
                closed.append((v, ended))
        applied = new.with_validity(start, None)
        live.append(applied)
        added.append(applied)
        result.accepted.append(f"{item.get('id')} {item['key']}")
    if wanted is not None:
        matched = {i.get("id") for i in items} | {i.get("key") for i in items}
        result.unknown = sorted(wanted - matched)
    if added:
        store.save_live(live)
        if book is not None:
            for old, ended in closed:
                book.replace_version(old, ended)
            book.extend(added)
    store.save_quarantine(keep)
    return result


class BackgroundRefresher:
    """Refreshes in a daemon thread when the live prices are older than the TTL."""

    def __init__(self, settings: Settings, book: PriceBook) -> None:
        self.settings = settings
        self.book = book
        self.last_report: RefreshReport | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jevons-price-refresh", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def age_seconds(self) -> float | None:
        last = PriceStore(self.settings.home_dir).state().get("last_success_at")
        if not last:
            return None
        return (datetime.now(UTC) - datetime.fromisoformat(last)).total_seconds()

    def _run(self) -> None:
        ttl = max(float(self.settings.prices.ttl_seconds), 1.0)
        while not self._stop.is_set():
            age = self.age_seconds()
            if age is None or age >= ttl:
                try:
                    self.last_report = refresh(self.settings, book=self.book)
                    for src in self.last_report.sources:
                        if src.status == "failed":
                            log.warning("price source %s failed: %s (keeping the prices of %s)",
                                        src.name, src.error, src.last_success_at or "the bundled snapshot")
                except Exception as exc:  # never let a refresh kill the process
                    log.warning("background price refresh failed: %s", exc)
                age = 0.0
            self._stop.wait(max(ttl - age, 1.0))
