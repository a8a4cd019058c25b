"""OpenRouter models API (``GET {url}/api/v1/models``, no key) -> price versions.

OpenRouter publishes USD per token as decimal strings. Mapping, per model entry:

- ``prompt`` -> input, ``completion`` -> output, ``input_cache_read`` -> cache read,
  ``input_cache_write`` -> 5-minute cache write, ``input_cache_write_1h`` -> 1-hour cache write,
  ``internal_reasoning`` -> reasoning *only when it differs from* ``completion`` (otherwise the
  reasoning tokens are billed as output, which is what the provider does), ``audio`` -> audio
  input, ``audio_output`` -> audio output, ``image_output`` -> image output, ``request`` -> per
  request, ``web_search`` -> per search.
- ``image`` is per token for some models and per image for others (image generators quote
  ``0.003``). It is taken as the image-input token rate only when it is below
  ``PER_TOKEN_CEILING`` (USD 100 per million tokens); otherwise it is kept in ``extra``.
- ``overrides`` entries with ``min_prompt_tokens`` become long-context tiers: a call whose total
  input is *more than* ``min_prompt_tokens`` is priced entirely at the tier (the providers bill
  "prompts over 200K tokens"; a prompt of exactly 200,000 stays at the base rate).
  Time-of-day overrides (``utc_start``/``utc_end``) are not modelled; they are counted in
  ``extra``.
- ``vendor/model:batch`` is the batch service tier of ``vendor/model``; ``:free`` and other
  suffixes are separate models. ``~vendor/...-latest`` entries are aliases of their
  ``alias_target``: the alias name is attached to the target's version.
- The book's provider is the vendor prefix of the id (``openai``, ``anthropic``, ``google``,
  ``mistralai``...), the model the rest of the id; the full id and ``canonical_slug`` are aliases.
- Router entries (``openrouter/*``) quote ``-1`` (price decided per request): skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from jevons.prices.model import Dim, Layer, PriceVersion, ServiceTier, Tier, parse_decimal

__all__ = ["PATH", "SOURCE", "ParsedSource", "RawPrice", "parse_models"]

SOURCE = "openrouter"
PATH = "/api/v1/models"
PER_TOKEN_CEILING = Decimal("0.0001")

_FIELDS: dict[str, Dim] = {
    "prompt": Dim.INPUT,
    "completion": Dim.OUTPUT,
    "input_cache_read": Dim.CACHE_READ,
    "input_cache_write": Dim.CACHE_WRITE_5M,
    "input_cache_write_1h": Dim.CACHE_WRITE_1H,
    "audio": Dim.AUDIO_INPUT,
    "audio_output": Dim.AUDIO_OUTPUT,
    "image_output": Dim.IMAGE_OUTPUT,
    "request": Dim.REQUEST,
    "web_search": Dim.WEB_SEARCH,
}


_FOLLOWS = ((Dim.IMAGE_INPUT, Dim.INPUT), (Dim.AUDIO_INPUT, Dim.INPUT), (Dim.REASONING, Dim.OUTPUT))


@dataclass(frozen=True, slots=True)
class RawPrice:
    """A price a source could not turn into a version (non-numeric, negative): for the guard."""

    source: str
    key: str
    field: str
    value: str
    reason: str


@dataclass(slots=True)
class ParsedSource:
    versions: list[PriceVersion] = field(default_factory=list)
    invalid: list[RawPrice] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _rates(
    pricing: dict[str, Any], key: str, invalid: list[RawPrice]
) -> tuple[dict[Dim, Decimal], dict[str, str]] | None:
    rates: dict[Dim, Decimal] = {}
    extra: dict[str, str] = {}
    bad = False
    for name, raw in pricing.items():
        if name == "overrides" or raw is None:
            continue
        if not isinstance(raw, (str, int)) or isinstance(raw, bool):
            invalid.append(RawPrice(SOURCE, key, name, repr(raw), "not a number"))
            bad = True
            continue
        try:
            value = parse_decimal(raw, what=name)
        except ValueError:
            invalid.append(RawPrice(SOURCE, key, name, str(raw), "not a number"))
            bad = True
            continue
        if value < 0:
            invalid.append(RawPrice(SOURCE, key, name, str(raw), "negative"))
            bad = True
            continue
        dim = _FIELDS.get(name)
        if dim is not None:
            rates[dim] = value
        elif name == "image" and value < PER_TOKEN_CEILING:
            rates[Dim.IMAGE_INPUT] = value
        elif name == "internal_reasoning":
            extra["internal_reasoning"] = str(raw)
        else:
            extra[name] = str(raw)
    reasoning = extra.pop("internal_reasoning", None)
    if reasoning is not None:
        value = Decimal(reasoning)
        if Dim.OUTPUT not in rates or value != rates[Dim.OUTPUT]:
            rates[Dim.REASONING] = value
    if bad:
        return None
    return rates, extra


def parse_models(
    payload: Any,
    *,
    fetched_at: datetime | None,
    layer: Layer = Layer.LIVE,
    valid_from: datetime | None = None,
) -> ParsedSource:
    """Turn an ``/api/v1/models`` response body (parsed JSON) into versions."""
    out = ParsedSource()
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ValueError("OpenRouter: response has no 'data' list")
    aliases: dict[str, list[str]] = {}
    entries: list[dict[str, Any]] = []
    for entry in payload["data"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            out.skipped.append(f"entry without an id: {str(entry)[:60]}")
            continue
        ident: str = entry["id"]
        target = entry.get("alias_target")
        if ident.startswith("~"):
            slug = target.get("slug") if isinstance(target, dict) else None
            if isinstance(slug, str):
                aliases.setdefault(slug, []).append(ident)
            else:
                out.skipped.append(f"{ident}: alias without a target")
            continue
        entries.append(entry)
    for entry in entries:
        version = _entry_version(entry, aliases, out, fetched_at, layer, valid_from)
        if version is not None:
            out.versions.append(version)
    return out


def _entry_version(
    entry: dict[str, Any],
    aliases: dict[str, list[str]],
    out: ParsedSource,
    fetched_at: datetime | None,
    layer: Layer,
    valid_from: datetime | None,
) -> PriceVersion | None:
    ident: str = entry["id"]
    if "/" not in ident:
        out.skipped.append(f"{ident}: id without a vendor prefix")
        return None
    vendor, rest = ident.split("/", 1)
    pricing = entry.get("pricing")
    if not isinstance(pricing, dict):
        out.skipped.append(f"{ident}: no pricing")
        return None
    if vendor == "openrouter" and str(pricing.get("prompt")) == "-1":
        out.skipped.append(f"{ident}: router, priced per request by the model it routes to")
        return None
    tier = ServiceTier.STANDARD
    model = rest
    base_id = ident
    if rest.endswith(":batch"):
        tier = ServiceTier.BATCH
        model = rest[: -len(":batch")]
        base_id = ident[: -len(":batch")]
    parsed = _rates(pricing, ident, out.invalid)
    if parsed is None:
        return None
    rates, extra = parsed
    if Dim.INPUT not in rates and Dim.OUTPUT not in rates:
        out.skipped.append(f"{ident}: no token price")
        return None
    tiers: list[Tier] = []
    timed: list[Any] = []
    for override in pricing.get("overrides") or ():
        if not isinstance(override, dict):
            continue
        if "min_prompt_tokens" not in override:
            timed.append(override)
            continue
        sub = {k: v for k, v in override.items() if k != "min_prompt_tokens"}
        parsed_tier = _rates(sub, f"{ident} (>= {override['min_prompt_tokens']} tokens)", out.invalid)
        if parsed_tier is None:
            return None
        tier_rates, _ = parsed_tier
        # a modality priced like plain input (or output) follows the tier's input (output) rate
        for dim, like in _FOLLOWS:
            follows = dim in rates and rates[dim] == rates.get(like)
            if follows and dim not in tier_rates and like in tier_rates:
                tier_rates[dim] = tier_rates[like]
        try:
            threshold = int(override["min_prompt_tokens"])
        except (TypeError, ValueError):
            out.invalid.append(
                RawPrice(SOURCE, ident, "min_prompt_tokens", str(override["min_prompt_tokens"]),
                         "not a number")
            )
            return None
        tiers.append(Tier(threshold, tier_rates))
    if timed:
        extra["time_of_day_overrides"] = str(len(timed))
    tiers.sort(key=lambda t: t.above_input_tokens)
    alias_list: list[str] = [base_id]
    slug = entry.get("canonical_slug")
    if isinstance(slug, str) and slug and slug != base_id:
        alias_list.append(slug)
    alias_list.extend(aliases.get(base_id, ()))
    if isinstance(slug, str):
        alias_list.extend(a for a in aliases.get(slug, ()) if a not in alias_list)
    return PriceVersion(
        provider=vendor,
        model=model,
        rates=rates,
        source=SOURCE,
        layer=layer,
        service_tier=tier,
        tiers=tuple(tiers),
        valid_from=valid_from,
        fetched_at=fetched_at,
        aliases=tuple(dict.fromkeys(alias_list)),
        extra=extra,
    )


def ids(versions: Iterable[PriceVersion]) -> list[str]:
    return sorted({f"{v.provider}/{v.model}" for v in versions})
