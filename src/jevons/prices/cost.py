"""Usage x price -> Cost, exactly.

The usage is split into disjoint billing buckets so that every token is priced once:

- input: ``cache_read`` / ``cache_write_5m`` / ``cache_write_1h`` at their cache rates; of the
  uncached rest, ``audio_input`` and ``image_input`` at their modality rates, the remainder
  at the ``input`` rate;
- output: ``reasoning`` at its own rate when the model publishes a distinct one (otherwise it
  stays in the ``output`` line, which is how providers bill it), ``audio_output`` and
  ``image_output`` at their modality rates, the remainder at the ``output`` rate;
- ``request`` (per call) and ``web_search`` (per search) where the model has such a price.

A bucket whose own price is missing falls back along a documented chain (cache read/write ->
input, 1h write -> 5m write -> input, audio/image -> input/output). A fallback makes the cost
``estimated``. A bucket with tokens and no price at all (``input``/``output`` missing, or web
searches without a search price) makes the cost ``unpriced``: its total is ``None``, never $0.
No value is rounded here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from jevons.prices.model import Dim, PriceVersion, ServiceTier, Tier
from jevons.usage import Usage

__all__ = ["Cost", "CostLine", "CostStatus", "price_usage", "unpriced_cost"]

CostStatus = Literal["priced", "estimated", "unpriced"]

_ZERO = Decimal(0)

# bucket -> fallback chain (first present rate wins; any but the first makes it estimated)
_CHAINS: dict[Dim, tuple[Dim, ...]] = {
    Dim.CACHE_READ: (Dim.CACHE_READ, Dim.INPUT),
    Dim.CACHE_WRITE_5M: (Dim.CACHE_WRITE_5M, Dim.INPUT),
    Dim.CACHE_WRITE_1H: (Dim.CACHE_WRITE_1H, Dim.CACHE_WRITE_5M, Dim.INPUT),
    Dim.AUDIO_INPUT: (Dim.AUDIO_INPUT, Dim.INPUT),
    Dim.IMAGE_INPUT: (Dim.IMAGE_INPUT, Dim.INPUT),
    Dim.INPUT: (Dim.INPUT,),
    Dim.OUTPUT: (Dim.OUTPUT,),
    Dim.REASONING: (Dim.REASONING,),
    Dim.AUDIO_OUTPUT: (Dim.AUDIO_OUTPUT, Dim.OUTPUT),
    Dim.IMAGE_OUTPUT: (Dim.IMAGE_OUTPUT, Dim.OUTPUT),
    Dim.WEB_SEARCH: (Dim.WEB_SEARCH,),
    Dim.REQUEST: (Dim.REQUEST,),
}


@dataclass(frozen=True, slots=True)
class CostLine:
    """One disjoint billing bucket: ``usd = tokens * usd_per_token`` exactly."""

    dimension: str
    tokens: int
    usd_per_token: Decimal
    usd: Decimal
    priced_as: str | None = None  # the dimension whose rate was used, when it is a fallback

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dimension": self.dimension,
            "tokens": self.tokens,
            "usd_per_token": f"{self.usd_per_token:f}",
            "usd": f"{self.usd:f}",
        }
        if self.priced_as:
            out["priced_as"] = self.priced_as
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostLine:
        return cls(
            d["dimension"], int(d["tokens"]), Decimal(d["usd_per_token"]), Decimal(d["usd"]),
            d.get("priced_as"),
        )


@dataclass(frozen=True, slots=True)
class Cost:
    """What one call (or one usage) cost, and which price said so."""

    model_requested: str
    model: str | None
    provider: str | None
    status: CostStatus
    total_usd: Decimal | None
    lines: tuple[CostLine, ...] = ()
    price_version: str | None = None
    source: str | None = None
    as_of: datetime | None = None
    service_tier: str = "standard"
    region: str | None = None
    tier_threshold: int | None = None
    missing: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def is_priced(self) -> bool:
        return self.total_usd is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_requested": self.model_requested,
            "model": self.model,
            "provider": self.provider,
            "status": self.status,
            "total_usd": None if self.total_usd is None else f"{self.total_usd:f}",
            "lines": [line.to_dict() for line in self.lines],
            "price_version": self.price_version,
            "source": self.source,
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "service_tier": self.service_tier,
            "region": self.region,
            "tier_threshold": self.tier_threshold,
            "missing": list(self.missing),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cost:
        total = d.get("total_usd")
        as_of = d.get("as_of")
        return cls(
            model_requested=d["model_requested"],
            model=d.get("model"),
            provider=d.get("provider"),
            status=d["status"],
            total_usd=None if total is None else Decimal(total),
            lines=tuple(CostLine.from_dict(x) for x in d.get("lines", ())),
            price_version=d.get("price_version"),
            source=d.get("source"),
            as_of=datetime.fromisoformat(as_of) if as_of else None,
            service_tier=d.get("service_tier", "standard"),
            region=d.get("region"),
            tier_threshold=d.get("tier_threshold"),
            missing=tuple(d.get("missing", ())),
            notes=tuple(d.get("notes", ())),
        )

# Hot path: ``book.cost()`` builds one Cost and a few CostLines per call. The generated
# ``__init__`` of a frozen dataclass sets each field through ``object.__setattr__``; setting
# the slots through their descriptors gives the same immutable objects about twice as fast.
_new = object.__new__
_line_set = tuple(getattr(CostLine, f).__set__ for f in CostLine.__slots__)
_cost_set = tuple(getattr(Cost, f).__set__ for f in Cost.__slots__)
assert CostLine.__slots__ == ("dimension", "tokens", "usd_per_token", "usd", "priced_as")
assert Cost.__slots__[:5] == ("model_requested", "model", "provider", "status", "total_usd")


def _line(dimension: str, tokens: int, rate: Decimal, usd: Decimal, priced_as: str | None) -> CostLine:
    obj: CostLine = _new(CostLine)
    s_dim, s_tok, s_rate, s_usd, s_as = _line_set
    s_dim(obj, dimension)
    s_tok(obj, tokens)
    s_rate(obj, rate)
    s_usd(obj, usd)
    s_as(obj, priced_as)
    return obj


(
    _s_requested, _s_model, _s_provider, _s_status, _s_total, _s_lines, _s_version, _s_source, _s_as_of,
    _s_tier, _s_region, _s_threshold, _s_missing, _s_notes,
) = _cost_set


def _cost(
    model_requested: str, model: str, provider: str, status: CostStatus, total: Decimal | None,
    lines: tuple[CostLine, ...], version_id: str, source: str, as_of: datetime | None, tier: str,
    region: str | None, threshold: int | None, missing: tuple[str, ...], notes: tuple[str, ...],
) -> Cost:
    obj: Cost = _new(Cost)
    _s_requested(obj, model_requested)
    _s_model(obj, model)
    _s_provider(obj, provider)
    _s_status(obj, status)
    _s_total(obj, total)
    _s_lines(obj, lines)
    _s_version(obj, version_id)
    _s_source(obj, source)
    _s_as_of(obj, as_of)
    _s_tier(obj, tier)
    _s_region(obj, region)
    _s_threshold(obj, threshold)
    _s_missing(obj, missing)
    _s_notes(obj, notes)
    return obj


def unpriced_cost(
    model_requested: str, *, provider: str | None = None, note: str, model: str | None = None
) -> Cost:
    """The cost of a call jevons cannot price: kept, flagged, re-priceable; never $0."""
    return Cost(model_requested, model, provider, "unpriced", None, notes=(note,))


# per bucket: (line name, rate or None, name of the fallback dim or None)
_PlanRow = tuple[str, Decimal | None, str | None]


class _Plan:
    """Everything about one (version, long-context tier) that does not depend on the usage:
    per bucket the rate that prices it after the fallback chain, and the version's own fields
    the Cost repeats. Built once per rate table; the hot path only multiplies."""

    __slots__ = (
        "distinct_reasoning", "model", "provider", "region", "request", "rows", "short_rows", "source",
        "threshold", "tier", "tier_name", "version", "version_id",
    )

    def __init__(self, version: PriceVersion, tier: Tier | None) -> None:
        rates = version.rates if tier is None else {**version.rates, **tier.rates}

        def row(dim: Dim) -> _PlanRow:
            for candidate in _CHAINS[dim]:
                rate = rates.get(candidate)
                if rate is not None:
                    return dim.value, rate, None if candidate is dim else candidate.value
            return dim.value, None, None

        self.version = version
        self.tier = tier
        self.rows = tuple(row(d) for d in _BUCKETS)
        # the buckets a plain text call can fill (input, cache read, output, reasoning), in
        # _BUCKETS order: most calls skip the seven others with one test
        self.short_rows = (self.rows[0], self.rows[1], self.rows[6], self.rows[7])
        self.distinct_reasoning = Dim.REASONING in rates
        self.request = row(Dim.REQUEST)
        self.model = version.model
        self.provider = version.provider
        self.version_id = version.version_id
        self.source = version.source
        self.tier_name = _TIER_NAMES[version.service_tier]
        self.region = version.region
        self.threshold = None if tier is None else tier.above_input_tokens


_BUCKETS = (
    Dim.INPUT, Dim.CACHE_READ, Dim.CACHE_WRITE_5M, Dim.CACHE_WRITE_1H, Dim.AUDIO_INPUT, Dim.IMAGE_INPUT,
    Dim.OUTPUT, Dim.REASONING, Dim.AUDIO_OUTPUT, Dim.IMAGE_OUTPUT, Dim.WEB_SEARCH,
)
_TIER_NAMES = {t: t.value for t in ServiceTier}
# id(version) (base rates) or (id(version), id(tier)) -> plan; the plan holds both objects, so
# an id cannot be reused while cached, and the hit is identity-checked anyway
_plans: dict[object, _Plan] = {}
_PLAN_CACHE_MAX = 4096


def _plan(version: PriceVersion, tier: Tier | None) -> _Plan:
    key: object = id(version) if tier is None else (id(version), id(tier))
    hit = _plans.get(key)
    if hit is not None and hit.version is version and hit.tier is tier:
        return hit
    plan = _Plan(version, tier)
    if len(_plans) >= _PLAN_CACHE_MAX:
        _plans.clear()
    _plans[key] = plan
    return plan


def price_usage(
    version: PriceVersion,
    usage: Usage,
    *,
    model_requested: str,
    as_of: datetime | None,
    status_floor: CostStatus = "priced",
    notes: tuple[str, ...] = (),
) -> Cost:
    """Price ``usage`` with ``version`` (long-context tier chosen by total input tokens)."""
    tier = version.tier_for(usage.input_tokens) if version.tiers else None
    plan = _plans.get(id(version)) if tier is None else None
    if plan is None or plan.version is not version:
        plan = _plan(version, tier)
    input_tokens = usage.input_tokens
    output_tokens = usage.output_tokens
    cache_read = usage.cache_read_tokens
    write_5m = usage.cache_write_5m_tokens
    write_1h = usage.cache_write_1h_tokens
    reasoning = usage.reasoning_tokens
    audio_in = usage.audio_input_tokens
    audio_out = usage.audio_output_tokens
    image_in = usage.image_input_tokens
    image_out = usage.image_output_tokens
    if not plan.distinct_reasoning:
        reasoning = 0  # billed inside the output line, as the provider bills it
    rows: tuple[_PlanRow, ...]
    counts: tuple[int, ...]
    web_searches = usage.web_search_requests
    if write_5m or write_1h or audio_in or image_in or audio_out or image_out or web_searches:
        text_in, audio_in, image_in = usage.uncached_input_split()
        rows = plan.rows
        counts = (
            text_in, cache_read, write_5m, write_1h, audio_in, image_in,
            output_tokens - reasoning - audio_out - image_out, reasoning, audio_out, image_out,
            web_searches,
        )
    else:
        rows = plan.short_rows
        counts = (input_tokens - cache_read, cache_read, output_tokens - reasoning, reasoning)
    lines: list[CostLine] = []
    missing: list[str] | None = None
    estimated = False
    total = _ZERO
    s_dim, s_tok, s_rate, s_usd, s_as = _line_set
    for (name, rate, priced_as), count in zip(rows, counts, strict=True):
        if not count:
            continue
        if rate is None:
            if missing is None:
                missing = []
            missing.append(name)
            continue
        usd = rate * count
        total += usd
        if priced_as is not None:
            estimated = True
        line: CostLine = _new(CostLine)  # _line(), written out: once per bucket per call
        s_dim(line, name)
        s_tok(line, count)
        s_rate(line, rate)
        s_usd(line, usd)
        s_as(line, priced_as)
        lines.append(line)
    request_name, request_rate, _ = plan.request
    requests = usage.requests
    if request_rate is not None and requests:
        usd = request_rate * requests
        total += usd
        lines.append(_line(request_name, requests, request_rate, usd, None))
    status: CostStatus
    if missing:
        status = "unpriced"
        notes = (*notes, f"no price for {', '.join(missing)}")
    elif estimated or status_floor == "estimated":
        status = "estimated"
    else:
        status = "priced"
    return _cost(
        model_requested,
        plan.model,
        plan.provider,
        status,
        None if missing else total,
        tuple(lines),
        plan.version_id,
        plan.source,
        as_of,
        plan.tier_name,
        plan.region,
        plan.threshold,
        () if missing is None else tuple(missing),
        notes,
    )
