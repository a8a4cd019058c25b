"""PriceBook: every price version jevons has seen, and the lookup that prices a call.

Lookups never do I/O: sources are fetched elsewhere (``jevons.prices.refresh``) and merged in.
Hot-path lookups (``at=None``) are answered from small dict caches that every change clears.

Merge precedence at a given time: a user override covering that time wins over a live
(fetched) version, which wins over the bundled snapshot. Percentage adjustments from the
overrides file (``all Bedrock -12%``) apply on top of live and bundled prices, not on explicit
override prices, and give a derived version whose id names the adjustment.
"""

from __future__ import annotations

import fnmatch
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal

from jevons.prices.cost import Cost, price_usage, unpriced_cost
from jevons.prices.model import Layer, PriceVersion, ServiceTier, Tier
from jevons.prices.resolve import Resolution, normalise, parse_bedrock, provider_hint
from jevons.usage import Usage

__all__ = ["PriceBook", "Adjustment", "DEFAULT_BEDROCK_REGION"]

DEFAULT_BEDROCK_REGION = "us-east-1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ModelKey = tuple[str, str]  # (provider, model)


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A percentage change on matching prices, e.g. a negotiated ``-12%`` on all of Bedrock."""

    factor: Decimal  # 0.88 for -12%
    provider: str | None = None
    model_glob: str = "*"
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    label: str = ""

    def applies(self, version: PriceVersion, at: datetime | None) -> bool:
        if version.layer is Layer.OVERRIDE:
            return False
        if self.provider is not None and version.provider != self.provider:
            return False
        if not fnmatch.fnmatchcase(version.model.lower(), self.model_glob.lower()):
            return False
        if at is None:
            return self.valid_to is None
        if self.valid_from is not None and at < self.valid_from:
            return False
        return not (self.valid_to is not None and at >= self.valid_to)

    def apply(self, version: PriceVersion) -> PriceVersion:
        def scale(rates: dict[object, Decimal]) -> dict[object, Decimal]:
            return {d: r * self.factor for d, r in rates.items()}

        return replace(
            version,
            rates=scale(version.rates),  # type: ignore[arg-type]
            tiers=tuple(Tier(t.above_input_tokens, scale(t.rates)) for t in version.tiers),  # type: ignore[arg-type]
            version_id=f"{version.version_id}*{self.label or self.factor}",
        )


class PriceBook:
    """All known price versions, indexed for resolution and time-aware lookup."""

    def __init__(
        self,
        versions: Iterable[PriceVersion] = (),
        *,
        adjustments: Iterable[Adjustment] = (),
        fallback: PriceVersion | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._by_key: dict[ModelKey, list[PriceVersion]] = defaultdict(list)
        self._alias: dict[str, set[ModelKey]] = defaultdict(set)
        self._native: dict[str, set[ModelKey]] = defaultdict(set)
        self._normal: dict[str, set[ModelKey]] = defaultdict(set)
        self._adjustments: list[Adjustment] = list(adjustments)
        self.fallback = fallback
        self._resolve_cache: dict[tuple[str, str | None], Resolution] = {}
        self._current_cache: dict[tuple[object, ...], tuple[PriceVersion | None, tuple[str, ...]]] = {}
        for v in versions:
            self._add(v)

    # ------------------------------------------------------------------ building
    def add(self, version: PriceVersion) -> None:
        with self._lock:
            self._add(version)
            self._clear_caches()

    def extend(self, versions: Iterable[PriceVersion]) -> None:
        with self._lock:
            for v in versions:
                self._add(v)
            self._clear_caches()

    def replace_version(self, old: PriceVersion, new: PriceVersion) -> None:
        """Swap one stored version (e.g. to close its validity interval)."""
        with self._lock:
            bucket = self._by_key[(old.provider, old.model)]
            bucket[bucket.index(old)] = new
            self._clear_caches()

    def add_adjustment(self, adjustment: Adjustment) -> None:
        with self._lock:
            self._adjustments.append(adjustment)
            self._clear_caches()

    def _add(self, v: PriceVersion) -> None:
        key = (v.provider, v.model)
        self._by_key[key].append(v)
        self._alias[f"{v.provider}/{v.model}".lower()].add(key)
        for alias in v.aliases:
            self._alias[alias.lower()].add(key)
        self._native[v.model.lower()].add(key)
        self._normal[normalise(v.model)].add(key)
        for alias in v.aliases:
            self._normal[normalise(alias)].add(key)

    def _clear_caches(self) -> None:
        self._resolve_cache.clear()
        self._current_cache.clear()

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return sum(len(v) for v in self._by_key.values())

    def all_versions(self) -> list[PriceVersion]:
        with self._lock:
            return [v for bucket in self._by_key.values() for v in bucket]

    def models(self, provider: str | None = None) -> list[ModelKey]:
        want = provider_hint(provider)
        return sorted(k for k in self._by_key if want is None or k[0] == want)

    def versions(self, provider: str, model: str) -> list[PriceVersion]:
        return list(self._by_key.get((provider, model), ()))

    @property
    def adjustments(self) -> tuple[Adjustment, ...]:
        return tuple(self._adjustments)

    # ------------------------------------------------------------------ resolution
    def resolve(self, name: str, provider: str | None = None) -> Resolution:
        cache_key = (name, provider)
        hit = self._resolve_cache.get(cache_key)
        if hit is not None:
            return hit
        with self._lock:
            res = self._resolve(name, provider)
            self._resolve_cache[cache_key] = res
            return res

    def _resolve(self, name: str, provider: str | None) -> Resolution:
        hint = provider_hint(provider)
        bedrock = parse_bedrock(name, hinted=hint == "bedrock")
        if bedrock is not None:
            target = bedrock.model.lower()
            keys = {k for k in self._native.get(target, ()) if k[0] == "bedrock"}
            step = "Bedrock id"
            if not keys:
                keys = {k for k in self._normal.get(normalise(bedrock.model), ()) if k[0] == "bedrock"}
                step = "Bedrock id (normalised)"
            if keys:
                return self._pick(name, keys, hint, step, bedrock.geo, bedrock.region)
            if hint == "bedrock":
                return Resolution(name, None, None, "Bedrock id not in the book")
        lowered = name.strip().lower()
        for step, index, probe in (
            ("exact key or alias", self._alias, lowered),
            ("exact native id", self._native, lowered),
            ("normalised name", self._normal, normalise(name)),
        ):
            keys = index.get(probe)
            if keys:
                res = self._pick(name, set(keys), hint, step, None, None)
                if res.found:
                    return res
        return Resolution(name, None, None, "no exact, native or normalised match")

    def _pick(
        self,
        name: str,
        keys: set[ModelKey],
        hint: str | None,
        step: str,
        geo: str | None,
        region: str | None,
    ) -> Resolution:
        candidates = keys
        if hint is not None:
            hinted = {k for k in keys if k[0] == hint}
            if not hinted:
                return Resolution(name, None, None, f"{step}: no candidate of provider {hint!r}")
            candidates = hinted
        elif geo is None and region is None:
            non_bedrock = {k for k in candidates if k[0] != "bedrock"}
            candidates = non_bedrock or candidates
        ordered = sorted(candidates, key=lambda k: (len(normalise(k[1])), f"{k[0]}/{k[1]}"))
        provider, model = ordered[0]
        return Resolution(
            name, provider, model, step,
            tuple(f"{p}/{m}" for p, m in ordered), geo, region,
        )

    # ------------------------------------------------------------------ lookup
    def lookup(
        self,
        name: str,
        *,
        provider: str | None = None,
        at: datetime | None = None,
        tier: str | None = None,
        region: str | None = None,
    ) -> tuple[Resolution, PriceVersion | None, tuple[str, ...]]:
        """Resolve ``name`` and find the version in force at ``at`` (``None``: now).

        Returns the resolution, the version (or ``None``) and notes on any approximation made
        (a missing service tier or region priced from the standard / default variant).
        """
        res = self.resolve(name, provider)
        if not res.found:
            return res, None, ()
        if at is not None and at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        assert res.provider is not None and res.model is not None
        want_tier = ServiceTier(tier) if tier else ServiceTier.STANDARD
        want_region = region or res.region
        cache_key = (res.provider, res.model, want_tier, res.geo, want_region, at)
        hit = self._current_cache.get(cache_key) if at is None else None
        if hit is not None:
            return res, hit[0], hit[1]
        with self._lock:
            version, notes = self._find(res, want_tier, want_region, at)
            if version is not None:
                for adj in self._adjustments:
                    if adj.applies(version, at):
                        version = adj.apply(version)
            if at is None:
                self._current_cache[cache_key] = (version, notes)
            return res, version, notes

    def _find(
        self, res: Resolution, tier: ServiceTier, region: str | None, at: datetime | None
    ) -> tuple[PriceVersion | None, tuple[str, ...]]:
        assert res.provider is not None and res.model is not None
        bucket = [v for v in self._by_key.get((res.provider, res.model), ()) if v.covers(at)]
        if not bucket:
            return None, (f"no version of {res.provider}/{res.model} in force at {at or 'now'}",)
        notes: list[str] = []
        geo = "global" if res.geo == "global" else None
        pool = [v for v in bucket if v.service_tier is tier]
        if not pool:
            notes.append(f"no {tier.value} price; standard price used")
            pool = [v for v in bucket if v.service_tier is ServiceTier.STANDARD] or bucket
        if any(v.geo is not None or v.region is not None for v in pool):
            geo_pool = [v for v in pool if v.geo == geo]
            if not geo_pool:
                notes.append(f"no {geo or 'regional'} price; {'regional' if geo else 'global'} price used")
                geo_pool = pool
            pool = geo_pool
            regions = {v.region for v in pool}
            if region is None and regions - {None}:
                region = DEFAULT_BEDROCK_REGION
                notes.append(f"no region given; {DEFAULT_BEDROCK_REGION} price used")
            if region not in regions:
                fallback_region = DEFAULT_BEDROCK_REGION if DEFAULT_BEDROCK_REGION in regions else min(
                    (r for r in regions if r), default=None
                )
                notes.append(f"no price in region {region}; {fallback_region} price used")
                region = fallback_region
            pool = [v for v in pool if v.region == region]
        best = max(pool, key=lambda v: (v.layer.value, v.valid_from or _EPOCH))
        return best, tuple(notes)

    # ------------------------------------------------------------------ cost
    def cost(
        self,
        model: str,
        usage: Usage,
        *,
        provider: str | None = None,
        at: datetime | None = None,
        tier: str | None = None,
        region: str | None = None,
    ) -> Cost:
        """Price one call. Unknown model: the fallback price class (``estimated``) when one is
        configured, else ``unpriced`` with ``total_usd=None`` — never a silent $0."""
        res, version, notes = self.lookup(model, provider=provider, at=at, tier=tier, region=region)
        if version is None:
            why = res.explain() if not res.found else "; ".join(notes)
            if self.fallback is not None:
                return price_usage(
                    self.fallback, usage, model_requested=model, as_of=at,
                    status_floor="estimated", notes=(f"fallback price class used: {why}",),
                )
            return unpriced_cost(model, provider=res.provider or provider, note=why, model=res.model)
        return price_usage(
            version, usage, model_requested=model, as_of=at or version.fetched_at or version.valid_from,
            status_floor="estimated" if notes else "priced", notes=notes,
        )
