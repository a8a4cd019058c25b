"""The user overrides file (TOML): negotiated rates, custom or fine-tuned models, discounts.

Prices are exact: TOML numbers are read as ``Decimal`` (never float), strings work too. Token
prices are USD per million tokens unless ``unit = "per_token"``; ``request`` and ``web_search``
are always USD per request / per search::

    [[prices]]
    provider = "openai"                 # who bills the call (default "custom")
    model = "ft:gpt-4o-mini-2024-07-18:acme::abc123"
    aliases = ["acme-support-bot"]
    input = 0.30                        # USD per 1M tokens
    output = 1.20
    cache_read = 0.15
    valid_from = 2026-01-01             # optional; date or datetime (UTC when no offset)
    service_tier = "standard"           # standard | batch | flex | priority
    # region = "eu-west-1"; geo = "global"   (Bedrock variants)

      [[prices.tiers]]                  # long-context tier: whole call above the threshold
      above_input_tokens = 200000
      input = 0.60
      output = 2.40

    [[adjustments]]                     # "all Bedrock -12%"
    provider = "bedrock"
    model = "*"                         # glob on the model id (default "*")
    percent = -12
    label = "AWS private pricing"       # appears in the version id of every adjusted price
    valid_from = 2026-01-01

Dimensions: ``input``, ``output``, ``cache_read``, ``cache_write_5m`` (alias ``cache_write``),
``cache_write_1h``, ``reasoning``, ``audio_input``, ``audio_output``, ``image_input``,
``image_output``, ``request``, ``web_search``.

A ``[[prices]]`` entry whose ``provider``/``model`` resolves to a model already in the book is
stored under that model's key (the name given becomes an alias), so a negotiated rate applies
to every name the model is called by. Override prices win over live and bundled prices
while they are valid; adjustments apply to live and bundled prices only.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

from jevons.prices.book import Adjustment
from jevons.prices.model import Dim, Layer, PriceVersion, ServiceTier, Tier, parse_decimal

__all__ = ["Overrides", "OverridesError", "load_overrides", "parse_overrides"]

SOURCE = "override"
_PER_UNIT = {Dim.REQUEST, Dim.WEB_SEARCH}
_DIM_NAMES: dict[str, Dim] = {d.value: d for d in Dim}
_DIM_NAMES["cache_write"] = Dim.CACHE_WRITE_5M
_PRICE_KEYS = {
    "provider", "model", "aliases", "unit", "valid_from", "valid_to", "service_tier", "geo",
    "region", "tiers", "note",
}
_ADJ_KEYS = {"provider", "model", "percent", "factor", "label", "valid_from", "valid_to"}

Resolver = Callable[[str, str | None], tuple[str, str] | None]


class OverridesError(ValueError):
    """A problem in the overrides file, naming the file and the entry."""


@dataclass(slots=True)
class Overrides:
    versions: list[PriceVersion] = field(default_factory=list)
    adjustments: list[Adjustment] = field(default_factory=list)


def _when(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(), tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise OverridesError(f"{where}: {value!r} is not an ISO date") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise OverridesError(f"{where}: {value!r} is not a date")


def _rates(table: dict[str, Any], per_token: bool, where: str, skip: set[str]) -> dict[Dim, Decimal]:
    rates: dict[Dim, Decimal] = {}
    for name, raw in table.items():
        if name in skip:
            continue
        dim = _DIM_NAMES.get(name)
        if dim is None:
            raise OverridesError(f"{where}: unknown key {name!r}")
        try:
            value = parse_decimal(raw, what=f"{where}.{name}")
        except ValueError as exc:
            raise OverridesError(str(exc)) from exc
        if value < 0:
            raise OverridesError(f"{where}.{name}: negative price {value}")
        rates[dim] = value if per_token or dim in _PER_UNIT else value.scaleb(-6)
    return rates


def parse_overrides(text: str, *, origin: str = "overrides", resolver: Resolver | None = None) -> Overrides:
    """Parse the TOML text; ``resolver(name, provider)`` maps a model to an existing book key."""
    try:
        doc = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise OverridesError(f"{origin}: {exc}") from exc
    unknown = set(doc) - {"prices", "adjustments"}
    if unknown:
        raise OverridesError(f"{origin}: unknown section(s) {sorted(unknown)}")
    out = Overrides()
    for i, entry in enumerate(doc.get("prices", [])):
        where = f"{origin}: prices[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise OverridesError(f"{where}: needs a model name")
        unit = entry.get("unit", "per_mtok")
        if unit not in ("per_mtok", "per_token"):
            raise OverridesError(f"{where}.unit: {unit!r} is not per_mtok or per_token")
        per_token = unit == "per_token"
        rates = _rates(entry, per_token, where, _PRICE_KEYS)
        if not rates:
            raise OverridesError(f"{where}: no price given")
        tiers = []
        for j, tier in enumerate(entry.get("tiers", [])):
            twhere = f"{where}.tiers[{j}]"
            if not isinstance(tier, dict) or not isinstance(tier.get("above_input_tokens"), int):
                raise OverridesError(f"{twhere}: needs an integer above_input_tokens")
            tier_rates = _rates(tier, per_token, twhere, {"above_input_tokens"})
            tiers.append(Tier(tier["above_input_tokens"], tier_rates))
        provider = str(entry.get("provider") or "custom").lower()
        model = entry["model"]
        aliases = [str(a) for a in entry.get("aliases", [])]
        if resolver is not None:
            found = resolver(model, provider)
            if found is not None and found != (provider, model):
                aliases.append(model)
                provider, model = found
        try:
            tier_name = ServiceTier(entry.get("service_tier", "standard"))
        except ValueError as exc:
            bad = entry.get("service_tier")
            raise OverridesError(f"{where}.service_tier: {bad!r} is not a service tier") from exc
        try:
            out.versions.append(
                PriceVersion(
                    provider=provider,
                    model=model,
                    rates=rates,
                    source=SOURCE,
                    layer=Layer.OVERRIDE,
                    service_tier=tier_name,
                    geo=entry.get("geo"),
                    region=entry.get("region"),
                    tiers=tuple(sorted(tiers, key=lambda t: t.above_input_tokens)),
                    valid_from=_when(entry.get("valid_from"), f"{where}.valid_from"),
                    valid_to=_when(entry.get("valid_to"), f"{where}.valid_to"),
                    aliases=tuple(dict.fromkeys(aliases)),
                )
            )
        except ValueError as exc:
            raise OverridesError(f"{where}: {exc}") from exc
    for i, entry in enumerate(doc.get("adjustments", [])):
        where = f"{origin}: adjustments[{i}]"
        if not isinstance(entry, dict):
            raise OverridesError(f"{where}: not a table")
        extra = set(entry) - _ADJ_KEYS
        if extra:
            raise OverridesError(f"{where}: unknown key(s) {sorted(extra)}")
        try:
            if "percent" in entry:
                factor = 1 + parse_decimal(entry["percent"], what=f"{where}.percent") / 100
            elif "factor" in entry:
                factor = parse_decimal(entry["factor"], what=f"{where}.factor")
            else:
                raise OverridesError(f"{where}: needs percent (e.g. -12) or factor (e.g. 0.88)")
        except ValueError as exc:
            raise OverridesError(str(exc)) from exc
        if factor < 0:
            raise OverridesError(f"{where}: a discount cannot exceed 100%")
        adj_provider = entry.get("provider")
        out.adjustments.append(
            Adjustment(
                factor=factor,
                provider=str(adj_provider).lower() if adj_provider else None,
                model_glob=str(entry.get("model", "*")),
                valid_from=_when(entry.get("valid_from"), f"{where}.valid_from"),
                valid_to=_when(entry.get("valid_to"), f"{where}.valid_to"),
                label=str(entry.get("label") or _default_label(adj_provider, entry)),
            )
        )
    return out


def _default_label(provider: object, entry: dict[str, Any]) -> str:
    who = str(provider or "all")
    if "percent" in entry:
        return f"{who} {entry['percent']}%"
    return f"{who} x{entry['factor']}"


def load_overrides(path: str | Path, *, resolver: Resolver | None = None) -> Overrides:
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise OverridesError(f"{file}: overrides file not found") from exc
    return parse_overrides(text, origin=str(file), resolver=resolver)
