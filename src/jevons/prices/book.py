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
from time import time as _time

from jevons.prices.cost import Cost, price_usage, unpriced_cost
from jevons.prices.model import Layer, PriceVersion, ServiceTier, Tier
from jevons.prices.resolve import (
    NAME_ALIASES,
    Resolution,
    latest_family,
    normalise,
    parse_bedrock,
    provider_hint,
    snapshot_family,
    strip_route_prefix,
)
from jevons.usage import Usage

__all__ = ["DEFAULT_BEDROCK_REGION", "GEO_DEFAULT_REGION", "GEO_REGION_PREFIXES", "Adjustment", "PriceBook"]

DEFAULT_BEDROCK_REGION = "us-east-1"
# the region whose price stands in when a Bedrock id names a geography but the client's region
# is unknown (the geography's largest region)
GEO_DEFAULT_REGION: dict[str | None, str] = {
    None: DEFAULT_BEDROCK_REGION,
    "global": DEFAULT_BEDROCK_REGION,
    "us": "us-east-1",
    "us-gov": "us-gov-west-1",
    "eu": "eu-west-1",
    "apac": "ap-southeast-1",
    "jp": "ap-northeast-1",
    "au": "ap-southeast-2",
    "ca": "ca-central-1",
}
GEO_REGION_PREFIXES: dict[str | None, tuple[str, ...]] = {
    "us": ("us-",),
    "us-gov": ("us-gov-",),
    "eu": ("eu-",),
    "apac": ("ap-",),
    "jp": ("ap-northeast-1", "ap-northeast-3"),
    "au": ("ap-southeast-2", "ap-southeast-4"),
    "ca": ("ca-",),
}
# service-tier names as providers report them -> the book's tiers; any other name is priced at
# the standard price and flagged estimated (never an error on the customer's call)
_TIER_ALIASES: dict[str, ServiceTier] = {t.value: t for t in ServiceTier} | {
    "default": ServiceTier.STANDARD,
    "auto": ServiceTier.STANDARD,
    "on_demand": ServiceTier.STANDARD,
    "on-demand": ServiceTier.STANDARD,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FAR = datetime(9999, 1, 1, tzinfo=UTC)


def _specificity(v: PriceVersion) -> tuple[int, datetime, float]:
    """Merge order among versions covering one instant: higher layer, then the later start,
    then the earlier end (a dated historical version beats an open-ended one)."""
    return (v.layer.value, v.valid_from or _EPOCH, -(v.valid_to or _FAR).timestamp())

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
        # alias -> key -> latest fetch time of a version carrying it (a moving alias such as
        # ``~anthropic/claude-sonnet-latest`` follows its most recent carrier)
        self._alias_seen: dict[str, dict[ModelKey, datetime]] = defaultdict(dict)
        self._native: dict[str, set[ModelKey]] = defaultdict(set)
        self._normal: dict[str, set[ModelKey]] = defaultdict(set)
        self._adjustments: list[Adjustment] = list(adjustments)
        self.fallback = fallback
        self._resolve_cache: dict[tuple[str, str | None], Resolution] = {}
        self._current_cache: dict[tuple[object, ...], tuple[PriceVersion | None, tuple[str, ...]]] = {}
        # (name, provider, tier, region) -> lookup result now: one dict hit on the hot path
        self._hot: dict[tuple[object, ...], tuple[Resolution, PriceVersion | None, tuple[str, ...]]] = {}
        # bumped by every change: a lookup that raced one must not cache what it found before it
        self._generation = 0
        for v in versions:
            self._add(v)
        self._boundary_ts = self._next_boundary()

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
        seen = v.fetched_at or v.valid_from or _EPOCH
        for alias in v.aliases:
            low = alias.lower()
            self._alias[low].add(key)
            carriers = self._alias_seen[low]
            if seen >= carriers.get(key, _EPOCH):
                carriers[key] = seen
        self._native[v.model.lower()].add(key)
        self._normal[normalise(v.model)].add(key)
        for alias in v.aliases:
            self._normal[normalise(alias)].add(key)

    def _clear_caches(self) -> None:
        self._generation += 1
        self._resolve_cache.clear()
        self._current_cache.clear()
        self._hot.clear()
        self._boundary_ts = self._next_boundary()

    def _next_boundary(self) -> float:
        """When the current-price cache goes stale: the next start or end of a version or
        adjustment after now (a price scheduled for next month takes over by itself)."""
        now = datetime.now(UTC)
        upcoming = _FAR
        for bucket in self._by_key.values():
            for v in bucket:
                for edge in (v.valid_from, v.valid_to):
                    if edge is not None and now < edge < upcoming:
                        upcoming = edge
        for adj in self._adjustments:
            for edge in (adj.valid_from, adj.valid_to):
                if edge is not None and now < edge < upcoming:
                    upcoming = edge
        return upcoming.timestamp()

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
        raw = name.strip()
        routed = strip_route_prefix(raw)
        if routed is not None:  # LiteLLM-style ``bedrock/<id>``
            raw, hint = routed, hint or "bedrock"
        bedrock = parse_bedrock(raw, hinted=hint == "bedrock")
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
        lowered = raw.lower()
        alias_keys = self._alias.get(lowered)
        if alias_keys:
            carriers = self._alias_seen.get(lowered, {})
            newest = max((carriers.get(k, _EPOCH) for k in alias_keys), default=_EPOCH)
            fresh = {k for k in alias_keys if carriers.get(k, _EPOCH) == newest} or set(alias_keys)
            res = self._pick(name, fresh, hint, "exact key or alias", None, None)
            if res.found:
                return res
        native_keys = self._native.get(lowered)
        if native_keys:
            res = self._pick(name, set(native_keys), hint, "exact native id", None, None)
            if res.found:
                return res
        bare = lowered.rsplit("/", 1)[-1]
        target_name = NAME_ALIASES.get(bare)
        if target_name is not None:
            res = self._resolve(target_name, provider)
            if res.found:
                return Resolution(
                    name, res.provider, res.model, f"alias table ({bare} -> {target_name})",
                    res.candidates, res.geo, res.region,
                )
        normal_keys = self._normal.get(normalise(raw))
        if normal_keys:
            res = self._pick(name, set(normal_keys), hint, "normalised name", None, None)
            if res.found:
                return res
        family = latest_family(bare)
        if family is not None:
            latest = self._newest_of_family(name, family, hint)
            if latest is not None:
                return latest
        snap = snapshot_family(bare)
        if snap is not None:
            dated = self._dated_snapshot(name, snap[0], snap[1], hint)
            if dated is not None:
                return dated
        return Resolution(name, None, None, "no exact, native, alias-table or normalised match")

    def _newest_of_family(self, name: str, family: str, hint: str | None) -> Resolution | None:
        """``<family>-latest``: the model ``<family>-<YYMM>`` with the newest date in the book."""
        dated: list[tuple[str, ModelKey]] = []
        for key in self._by_key:
            if hint is not None and key[0] != hint:
                continue
            suffix = snapshot_family(key[1].lower())
            if suffix is not None and suffix[0] == family:
                dated.append((suffix[1], key))
        if not dated:
            return None
        dated.sort(key=lambda item: (item[0], f"{item[1][0]}/{item[1][1]}"), reverse=True)
        best = dated[0][1]
        return Resolution(
            name, best[0], best[1], f"-latest rule (newest dated {family}-YYMM)",
            tuple(f"{p}/{m}" for _, (p, m) in dated),
        )

    def _dated_snapshot(self, name: str, family: str, date: str, hint: str | None) -> Resolution | None:
        """``<family>-<YYMM>`` (Mistral's dated names): a model of that family whose id or alias
        ends with the same date, e.g. ``mistral-small-2503`` -> ``mistral-small-3.1-24b-instruct``
        (canonical slug ``...-2503``)."""
        hits: set[ModelKey] = set()
        for alias, keys in self._alias.items():
            bare = alias.rsplit("/", 1)[-1]
            if bare.startswith(family + "-") and bare.endswith("-" + date):
                hits.update(keys)
        for key in self._by_key:
            bare = key[1].lower()
            if bare.startswith(family + "-") and bare.endswith("-" + date):
                hits.add(key)
        if hint is not None:
            hits = {k for k in hits if k[0] == hint}
        hits = {k for k in hits if k[0] != "bedrock"} or hits
        if not hits:
            return None
        return self._pick(name, hits, hint, f"dated-snapshot rule ({family} of {date})", None, None)

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
        ordered = sorted(candidates, key=lambda k: (len(normalise(k[1])), len(k[1]), f"{k[0]}/{k[1]}"))
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
        if at is None and _time() >= self._boundary_ts:  # a dated price or adjustment started or ended
            with self._lock:
                self._clear_caches()
        generation = self._generation  # what the book was when ``res`` and ``hit`` were read
        res = self.resolve(name, provider)
        if not res.found:
            return res, None, ()
        if at is not None and at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        assert res.provider is not None and res.model is not None
        want_tier = _TIER_ALIASES.get(tier.strip().lower(), tier) if tier else ServiceTier.STANDARD
        want_region = region or res.region
        cache_key = (res.provider, res.model, want_tier, res.geo, want_region, at)
        if at is None:
            hit = self._current_cache.get(cache_key)
            if hit is not None:
                with self._lock:
                    if self._generation == generation:
                        self._hot[(name, provider, tier, region)] = (res, hit[0], hit[1])
                        return res, hit[0], hit[1]
        with self._lock:
            if self._generation != generation:  # the book changed meanwhile: look again, locked
                return self.lookup(name, provider=provider, at=at, tier=tier, region=region)
            when = at or datetime.now(UTC)
            version, notes = self._find(res, want_tier, want_region, when)
            if version is not None:
                for adj in self._adjustments:
                    if adj.applies(version, when):
                        version = adj.apply(version)
            if at is None:
                self._current_cache[cache_key] = (version, notes)
                self._hot[(name, provider, tier, region)] = (res, version, notes)
            return res, version, notes

    def _find(
        self, res: Resolution, tier: ServiceTier | str, region: str | None, at: datetime | None
    ) -> tuple[PriceVersion | None, tuple[str, ...]]:
        assert res.provider is not None and res.model is not None
        bucket = [v for v in self._by_key.get((res.provider, res.model), ()) if v.covers(at)]
        if not bucket:
            return None, (f"no version of {res.provider}/{res.model} in force at {at or 'now'}",)
        notes: list[str] = []
        pool = [v for v in bucket if v.service_tier is tier]
        if not pool:
            name = tier.value if isinstance(tier, ServiceTier) else f"{tier!r} (unknown service tier)"
            notes.append(f"no {name} price; standard price used")
            pool = [v for v in bucket if v.service_tier is ServiceTier.STANDARD] or bucket
        if any(v.geo is not None or v.region is not None for v in pool):
            pool = self._by_place(pool, res.geo, region, notes)
        best = max(pool, key=_specificity)
        return best, tuple(notes)

    @staticmethod
    def _by_place(
        pool: list[PriceVersion], geo: str | None, region: str | None, notes: list[str]
    ) -> list[PriceVersion]:
        """Narrow Bedrock-style versions to the call's geography and region.

        ``global.`` ids take the ``global`` price, every other id (bare, ``us.``, ``eu.``...)
        the regional one. The client's region picks among regions; without it, the
        geography's default region stands in, and only when prices differ by region is the
        cost flagged as an estimate.
        """
        wanted_geo = "global" if geo == "global" else None

        def any_geo(v: PriceVersion) -> bool:  # an override without geo applies to every geo
            return v.layer is Layer.OVERRIDE and v.geo is None

        def any_region(v: PriceVersion) -> bool:
            return v.layer is Layer.OVERRIDE and v.region is None

        same_geo = [v for v in pool if v.geo == wanted_geo or any_geo(v)]
        if not same_geo:
            notes.append(
                f"no {wanted_geo or 'regional'} price; {'regional' if wanted_geo else 'global'} price used"
            )
            same_geo = pool
        regions = {v.region for v in same_geo if not any_region(v)}
        if not regions or (region is not None and region in regions):
            return [v for v in same_geo if v.region == region or any_region(v)]
        default = GEO_DEFAULT_REGION.get(geo, DEFAULT_BEDROCK_REGION)
        stand_in = default if default in regions else min((r for r in regions if r), default=None)
        chosen = [v for v in same_geo if v.region == stand_in or any_region(v)]
        if any(any_region(v) for v in chosen):
            return chosen  # a region-wide override answers for every region
        if region is not None:
            notes.append(f"no price in region {region}; {stand_in} price used")
        elif len(regions) > 1:
            # the client's region is unknown: it is one of the geography's regions (any region
            # for a bare or global id); an estimate only if their prices differ
            prefixes = GEO_REGION_PREFIXES.get(geo, ("",))
            possible = {r for r in regions if r and r.startswith(prefixes)} or regions
            digests = {
                max((v for v in same_geo if v.region == r), key=_specificity).content_digest()
                for r in possible
            }
            if len(digests) > 1:
                notes.append(f"no region given; {stand_in} price used")
        return chosen

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
        hot = self._hot.get((model, provider, tier, region)) if at is None else None
        if hot is not None and _time() < self._boundary_ts:
            res, version, notes = hot
        else:
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
