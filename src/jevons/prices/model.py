"""The data a price book holds: one ``PriceVersion`` per (model, variant, validity interval).

A price is USD per token (or per request / per search) as an exact ``Decimal``. A version carries
where it came from and when it was fetched, so any cost computed from it can be explained and
re-rated later.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any

__all__ = [
    "LAYER_PRECEDENCE",
    "Dim",
    "Layer",
    "PriceVersion",
    "ServiceTier",
    "Tier",
    "parse_decimal",
]


class Dim(StrEnum):
    """A priced dimension. Token dimensions are USD per token; the last two are USD per unit."""

    INPUT = "input"
    CACHE_READ = "cache_read"
    CACHE_WRITE_5M = "cache_write_5m"
    CACHE_WRITE_1H = "cache_write_1h"
    OUTPUT = "output"
    REASONING = "reasoning"
    AUDIO_INPUT = "audio_input"
    AUDIO_OUTPUT = "audio_output"
    IMAGE_INPUT = "image_input"
    IMAGE_OUTPUT = "image_output"
    REQUEST = "request"
    WEB_SEARCH = "web_search"


class ServiceTier(StrEnum):
    STANDARD = "standard"
    BATCH = "batch"
    FLEX = "flex"
    PRIORITY = "priority"


class Layer(Enum):
    """Where a version sits in the merge precedence: user overrides > live > bundled."""

    BUNDLED = 1
    LIVE = 2
    OVERRIDE = 3


LAYER_PRECEDENCE = (Layer.OVERRIDE, Layer.LIVE, Layer.BUNDLED)
# name -> member, for reading stored versions (a dict hit; the enum call costs ten times more)
_DIM_OF: dict[str, Dim] = {d.value: d for d in Dim}
_TIER_OF: dict[str, ServiceTier] = {t.value: t for t in ServiceTier}


def parse_decimal(value: Any, *, what: str = "price") -> Decimal:
    """Exact Decimal from a string or int; floats are refused (they are not exact)."""
    if isinstance(value, Decimal):
        out = value
    elif isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        try:
            out = Decimal(value)  # exact; surrounding whitespace is ignored
        except Exception as exc:  # decimal.InvalidOperation
            raise ValueError(f"{what}: {value!r} is not a number") from exc
    elif isinstance(value, (bool, float)):
        raise ValueError(f"{what}: {value!r} is not an exact number (use a string)")
    else:
        raise ValueError(f"{what}: {value!r} is not a number")
    if not out.is_finite():
        raise ValueError(f"{what}: {value!r} is not a finite number")
    return out


@dataclass(frozen=True, slots=True)
class Tier:
    """A long-context tier: when a call's total input tokens exceed ``above_input_tokens``, ALL
    tokens of the call are priced at ``rates`` (dimensions missing here keep the base rate)."""

    above_input_tokens: int
    rates: dict[Dim, Decimal]


@dataclass(frozen=True, slots=True)
class PriceVersion:
    """One price of one model variant over one validity interval ``[valid_from, valid_to)``.

    ``provider`` is who bills the call (``openai``, ``anthropic``, ``google``, ``mistral``,
    ``bedrock``, ``openrouter``, ...); ``model`` is that provider's canonical id.
    ``geo`` is ``None`` or a Bedrock inference-profile geography (``global``, ``us``, ``eu``...);
    ``region`` a cloud region (``us-east-1``) where prices differ by region.
    """

    provider: str
    model: str
    rates: dict[Dim, Decimal]
    source: str
    layer: Layer = Layer.BUNDLED
    service_tier: ServiceTier = ServiceTier.STANDARD
    geo: str | None = None
    region: str | None = None
    tiers: tuple[Tier, ...] = ()
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    fetched_at: datetime | None = None
    aliases: tuple[str, ...] = ()
    version_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for dim, rate in self.rates.items():
            if rate < 0:
                raise ValueError(f"{self.provider}/{self.model}: negative {dim.value} price {rate}")
        for name in ("valid_from", "valid_to", "fetched_at"):
            when = getattr(self, name)
            if when is not None and when.tzinfo is None:
                object.__setattr__(self, name, when.replace(tzinfo=UTC))
        if not self.version_id:
            object.__setattr__(self, "version_id", self.compute_version_id())

    @property
    def key(self) -> tuple[str, str, ServiceTier, str | None, str | None]:
        return (self.provider, self.model, self.service_tier, self.geo, self.region)

    def content_digest(self) -> str:
        """Hash of what is billed (rates and tiers), independent of fetch time."""
        import hashlib  # here, not at import: it loads OpenSSL, and most processes never hash
        parts = [f"{d.value}={r.normalize()}" for d, r in sorted(self.rates.items())]
        for t in self.tiers:
            parts.append(f"tier>{t.above_input_tokens}:")
            parts.extend(f"{d.value}={r.normalize()}" for d, r in sorted(t.rates.items()))
        return hashlib.sha256(";".join(parts).encode()).hexdigest()[:10]

    def compute_version_id(self) -> str:
        start = self.valid_from.strftime("%Y%m%d") if self.valid_from else "0"
        variant = self.service_tier.value
        if self.geo:
            variant += f".{self.geo}"
        if self.region:
            variant += f"@{self.region}"
        return f"{self.source}:{self.provider}/{self.model}:{variant}:{start}:{self.content_digest()}"

    def covers(self, at: datetime | None) -> bool:
        if at is None:
            return self.valid_to is None
        if self.valid_from is not None and at < self.valid_from:
            return False
        return not (self.valid_to is not None and at >= self.valid_to)

    def with_validity(self, valid_from: datetime | None, valid_to: datetime | None) -> PriceVersion:
        return replace(self, valid_from=valid_from, valid_to=valid_to, version_id="")

    def tier_for(self, input_tokens: int) -> Tier | None:
        """The long-context tier a call with this many input tokens falls in (``None``: base)."""
        chosen: Tier | None = None
        for tier in self.tiers:
            if input_tokens > tier.above_input_tokens:
                chosen = tier
        return chosen

    def rates_for(self, input_tokens: int) -> tuple[dict[Dim, Decimal], int | None]:
        """Rates for a call with this many input tokens, and the tier threshold used (if any)."""
        chosen: Tier | None = None
        for tier in self.tiers:
            if input_tokens > tier.above_input_tokens:
                chosen = tier
        if chosen is None:
            return self.rates, None
        merged = dict(self.rates)
        merged.update(chosen.rates)
        return merged, chosen.above_input_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "rates": {d.value: str(r) for d, r in self.rates.items()},
            "source": self.source,
            "layer": self.layer.name.lower(),
            "service_tier": self.service_tier.value,
            "geo": self.geo,
            "region": self.region,
            "tiers": [
                {"above_input_tokens": t.above_input_tokens,
                 "rates": {d.value: str(r) for d, r in t.rates.items()}}
                for t in self.tiers
            ],
            "valid_from": self.valid_from.isoformat() if self.valid_from else None,
            "valid_to": self.valid_to.isoformat() if self.valid_to else None,
            "fetched_at": self.fetched_at.isoformat() if self.fetched_at else None,
            "aliases": list(self.aliases),
            "version_id": self.version_id,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, layer: Layer | None = None) -> PriceVersion:
        """The inverse of ``to_dict``; ``layer`` (when given) overrides the stored one."""

        def rates(raw: dict[str, Any]) -> dict[Dim, Decimal]:
            return {_DIM_OF.get(k) or Dim(k): parse_decimal(v, what=k) for k, v in raw.items()}

        def when(raw: str | None) -> datetime | None:
            return datetime.fromisoformat(raw) if raw else None

        tier = data.get("service_tier", "standard")
        return cls(
            provider=data["provider"],
            model=data["model"],
            rates=rates(data["rates"]),
            source=data["source"],
            layer=layer or Layer[str(data.get("layer", "bundled")).upper()],
            service_tier=_TIER_OF.get(tier) or ServiceTier(tier),
            geo=data.get("geo"),
            region=data.get("region"),
            tiers=tuple(
                Tier(int(t["above_input_tokens"]), rates(t["rates"])) for t in data.get("tiers", ())
            ),
            valid_from=when(data.get("valid_from")),
            valid_to=when(data.get("valid_to")),
            fetched_at=when(data.get("fetched_at")),
            aliases=tuple(data.get("aliases", ())),
            version_id=data.get("version_id", ""),
            extra=dict(data.get("extra", {})),
        )
