"""AWS Bedrock public price list (bulk API, no key) -> price versions.

Two offers carry Bedrock token prices: ``AmazonBedrock`` (Amazon Nova, Meta, Mistral, DeepSeek,
gpt-oss, Qwen, Titan) and ``AmazonBedrockFoundationModels`` (Anthropic Claude, AI21, Cohere).
For each offer: ``{url}/offers/v1.0/aws/{offer}/current/region_index.json`` lists the regions
and the offer file of each (``currentVersionUrl``).

Reading a SKU:

- Only units ``1K tokens`` (divided by 1,000) and ``1M tokens`` (divided by 1,000,000) are token
  prices; every other unit (provisioned throughput hours, storage months, guardrail text units,
  rerank search units) is skipped.
- ``AmazonBedrock``: the model is ``attributes.model`` (``titanModel`` for Titan embeddings), the
  direction and service tier ``attributes.inferenceType`` (``Input tokens``, ``Output tokens``,
  ``Cache read input tokens``, ``Cache write input tokens``, optionally followed by ``batch``,
  ``flex`` or ``priority``).
- ``AmazonBedrockFoundationModels``: the model is ``attributes.servicename`` minus
  `` (Amazon Bedrock Edition)``; everything else is in ``usagetype``
  ``<PFX>-MP:<PFX>_<component>[_Global][_Batch|_LCtx]-Units`` with the CamelCase components
  ``InputTokenCount``, ``OutputTokenCount``, ``CacheReadInputTokenCount``,
  ``CacheWriteInputTokenCount`` (5-minute TTL) and ``CacheWrite1hInputTokenCount``, or, for newer
  models, the snake_case ``input_tokens``, ``output_tokens``, ``cache_read_tokens``,
  ``cache_write_tokens``, ``cache_write_1h_tokens`` with ``_global`` and ``_standard``/``_batch``.
  ``Global`` is the ``global.`` cross-region profile (geo ``global``); without it the price is
  the in-region / geographic profile rate (bare id, ``us.``, ``eu.``, ``apac.``...). ``LCtx`` is
  the long-context tier (whole call above 200K input tokens).
- The region is ``attributes.regionCode`` (never derived from the usagetype prefix).
- Model ids: a name-to-id map (``data/bedrock_models.json``, ``{model id: {offerCode,
  attribute, value}}``) turns offer names into Bedrock model ids. A name not in the map gets
  the id ``<vendor>.<name-slug>`` and is listed in ``ParsedSource.skipped`` as unmapped, so a
  new model is still priced (by that id) and the map can be extended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from jevons.prices.model import Dim, Layer, PriceVersion, ServiceTier, Tier, parse_decimal
from jevons.prices.sources.openrouter import ParsedSource, RawPrice

__all__ = [
    "LONG_CONTEXT_THRESHOLD",
    "OFFERS",
    "SOURCE",
    "OfferParse",
    "merge_offers",
    "name_map",
    "parse_offer",
    "parse_region_index",
    "region_index_path",
]

SOURCE = "bedrock"
OFFERS = ("AmazonBedrock", "AmazonBedrockFoundationModels")
LONG_CONTEXT_THRESHOLD = 200_000
_EDITION = " (Amazon Bedrock Edition)"
_UNITS = {"1k tokens": -3, "1m tokens": -6}

_USAGETYPE = re.compile(r"^[A-Z0-9]+-MP:[A-Z0-9]+_(?P<body>.+)-Units$")
_CAMEL: dict[str, Dim] = {
    "inputtokencount": Dim.INPUT,
    "outputtokencount": Dim.OUTPUT,
    "cachereadinputtokencount": Dim.CACHE_READ,
    "cachewriteinputtokencount": Dim.CACHE_WRITE_5M,
    "cachewrite1hinputtokencount": Dim.CACHE_WRITE_1H,
}
_SNAKE: tuple[tuple[str, Dim], ...] = (  # longest first
    ("cache_write_1h_tokens", Dim.CACHE_WRITE_1H),
    ("cache_write_tokens", Dim.CACHE_WRITE_5M),
    ("cache_read_tokens", Dim.CACHE_READ),
    ("output_tokens", Dim.OUTPUT),
    ("input_tokens", Dim.INPUT),
)
_INFERENCE: dict[str, Dim] = {
    "input tokens": Dim.INPUT,
    "output tokens": Dim.OUTPUT,
    "cache read input tokens": Dim.CACHE_READ,
    "cache write input tokens": Dim.CACHE_WRITE_5M,
}
_TIERS = {"batch": ServiceTier.BATCH, "flex": ServiceTier.FLEX, "priority": ServiceTier.PRIORITY,
          "standard": ServiceTier.STANDARD}


def region_index_path(offer: str) -> str:
    return f"/offers/v1.0/aws/{offer}/current/region_index.json"


def parse_region_index(payload: Any) -> dict[str, str]:
    """``{region: currentVersionUrl}`` from a region index."""
    regions = payload.get("regions") if isinstance(payload, dict) else None
    if not isinstance(regions, dict):
        raise ValueError("Bedrock region index has no 'regions' object")
    out: dict[str, str] = {}
    for region, info in regions.items():
        url = info.get("currentVersionUrl") if isinstance(info, dict) else None
        if isinstance(url, str):
            out[str(info.get("regionCode") or region)] = url
    return out


def name_map(models: dict[str, Any]) -> dict[tuple[str, str], str]:
    """``{(offerCode, name in the offer): model id}`` from ``bedrock_models.json``."""
    out: dict[tuple[str, str], str] = {}
    for model_id, info in sorted(models.items()):
        if isinstance(info, dict) and "offerCode" in info and "value" in info:
            out[(str(info["offerCode"]), str(info["value"]))] = model_id
    return out


@dataclass(frozen=True, slots=True)
class _Sku:
    model: str
    region: str
    geo: str | None
    tier: ServiceTier
    long_context: bool
    dim: Dim
    price: Decimal


@dataclass(slots=True)
class OfferParse:
    skus: list[_Sku] = field(default_factory=list)
    invalid: list[RawPrice] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def _model_id(offer: str, attrs: dict[str, Any], names: dict[tuple[str, str], str],
              result: OfferParse) -> str | None:
    if offer == "AmazonBedrockFoundationModels":
        name = attrs.get("servicename")
    else:
        name = attrs.get("model") or attrs.get("titanModel")
    if not isinstance(name, str) or not name:
        return None
    mapped = names.get((offer, name))
    if mapped is not None:
        return mapped
    vendor = _slug(str(attrs.get("provider") or "unknown").split()[0])
    derived = f"{vendor}.{_slug(name.removesuffix(_EDITION))}"
    note = f"unmapped Bedrock model name {name!r} ({offer}); priced as {derived}"
    if note not in result.skipped:
        result.skipped.append(note)
    return derived


def _classify_usagetype(usagetype: str) -> tuple[Dim, str | None, ServiceTier, bool] | None:
    m = _USAGETYPE.match(usagetype)
    if not m:
        return None
    body = m.group("body")
    lowered = body.lower()
    dim: Dim | None = None
    rest = ""
    for prefix, candidate in _SNAKE:
        if lowered == prefix or lowered.startswith(prefix + "_"):
            dim, rest = candidate, lowered[len(prefix):]
            break
    if dim is None:
        head, _, rest = lowered.partition("_")
        dim = _CAMEL.get(head)
        rest = "_" + rest if rest else ""
        if dim is None:
            return None
    geo: str | None = None
    tier = ServiceTier.STANDARD
    long_context = False
    for part in filter(None, rest.split("_")):
        if part == "global":
            geo = "global"
        elif part in _TIERS:
            tier = _TIERS[part]
        elif part in ("lctx", "longcontext"):
            long_context = True
        else:
            return None
    return dim, geo, tier, long_context


def _classify_inference(inference: str) -> tuple[Dim, ServiceTier] | None:
    text = inference.strip().lower()
    tier = ServiceTier.STANDARD
    for word, candidate in _TIERS.items():
        if text.endswith(" " + word):
            tier, text = candidate, text[: -len(word) - 1]
            break
    dim = _INFERENCE.get(text)
    return None if dim is None else (dim, tier)


def _on_demand_price(terms: dict[str, Any], sku: str) -> tuple[str, Any] | None:
    for term in (terms.get(sku) or {}).values():
        for dimension in (term.get("priceDimensions") or {}).values():
            if str(dimension.get("beginRange", "0")) != "0":
                continue
            return str(dimension.get("unit", "")), (dimension.get("pricePerUnit") or {}).get("USD")
    return None


def parse_offer(payload: Any, names: dict[tuple[str, str], str]) -> OfferParse:
    """Token-price SKUs of one regional offer file."""
    result = OfferParse()
    if not isinstance(payload, dict) or not isinstance(payload.get("products"), dict):
        raise ValueError("Bedrock offer file has no 'products' object")
    offer = str(payload.get("offerCode") or "")
    terms = (payload.get("terms") or {}).get("OnDemand") or {}
    for sku, product in sorted(payload["products"].items()):
        attrs = product.get("attributes") or {}
        priced = _on_demand_price(terms, sku)
        if priced is None:
            continue
        unit, raw = priced
        scale = _UNITS.get(unit.strip().lower())
        if scale is None:
            continue  # not a token price
        usagetype = str(attrs.get("usagetype", ""))
        classified: tuple[Dim, str | None, ServiceTier, bool] | None
        if offer == "AmazonBedrockFoundationModels":
            classified = _classify_usagetype(usagetype)
        else:
            inf = _classify_inference(str(attrs.get("inferenceType", "")))
            classified = None if inf is None else (inf[0], None, inf[1], False)
        if classified is None:
            result.skipped.append(f"{offer} {usagetype}: not a known token direction")
            continue
        model = _model_id(offer, attrs, names, result)
        region = attrs.get("regionCode")
        if model is None or not isinstance(region, str):
            result.skipped.append(f"{offer} {sku}: no model name or region")
            continue
        key = f"bedrock/{model}@{region} {usagetype}"
        try:
            value = parse_decimal(raw, what="USD")
        except ValueError:
            result.invalid.append(RawPrice(SOURCE, key, "pricePerUnit.USD", str(raw), "not a number"))
            continue
        if value < 0:
            result.invalid.append(RawPrice(SOURCE, key, "pricePerUnit.USD", str(raw), "negative"))
            continue
        dim, geo, tier, lctx = classified
        per_token = value.scaleb(scale).normalize()
        result.skus.append(_Sku(model, region, geo, tier, lctx, dim, per_token))
    return result


def merge_offers(
    parses: list[OfferParse],
    *,
    fetched_at: datetime | None,
    layer: Layer = Layer.LIVE,
    valid_from: datetime | None = None,
) -> ParsedSource:
    """Group SKUs of all offer files into one version per (model, region, geo, service tier)."""
    out = ParsedSource()
    base: dict[tuple[str, str, str | None, ServiceTier], dict[Dim, Decimal]] = {}
    long_ctx: dict[tuple[str, str, str | None, ServiceTier], dict[Dim, Decimal]] = {}
    for parse in parses:
        out.invalid.extend(parse.invalid)
        out.skipped.extend(s for s in parse.skipped if s not in out.skipped)
        for sku in parse.skus:
            key = (sku.model, sku.region, sku.geo, sku.tier)
            (long_ctx if sku.long_context else base).setdefault(key, {})[sku.dim] = sku.price
    for key in sorted(base, key=lambda k: (k[0], k[1], k[2] or "", k[3].value)):
        model, region, geo, tier = key
        tiers = (Tier(LONG_CONTEXT_THRESHOLD, long_ctx[key]),) if key in long_ctx else ()
        out.versions.append(
            PriceVersion(
                provider="bedrock",
                model=model,
                rates=base[key],
                source=SOURCE,
                layer=layer,
                service_tier=tier,
                geo=geo,
                region=region,
                tiers=tiers,
                valid_from=valid_from,
                fetched_at=fetched_at,
            )
        )
    for key in long_ctx:
        if key not in base:
            out.skipped.append(f"bedrock/{key[0]}@{key[1]}: long-context price without a base price")
    return out
