"""Model-name resolution: how a name a caller passes becomes one (provider, model) of the book.

The rule, applied in order; the first step that yields a candidate decides:

1. **Bedrock form.** An ARN (``arn:aws:bedrock:REGION:ACCOUNT:inference-profile/ID`` or
   ``.../foundation-model/ID``), an id with a cross-region prefix (``us.``, ``eu.``, ``apac.``,
   ``jp.``, ``au.``, ``us-gov.``, ``ca.``, ``global.``), a LiteLLM-style ``bedrock/ID``, or a
   ``vendor.model`` id with the ``bedrock`` hint. The prefix becomes the geography (``global``
   or regional), the ARN's region the region. Matched against Bedrock model ids exactly, then
   normalised.
2. **Exact key or alias**: ``provider/model`` as the book stores it, or a stored alias
   (OpenRouter id, ``canonical_slug``, ``~...-latest`` alias) — case-insensitive. When an alias
   is carried by several models (a moving ``-latest`` alias), the model whose price was fetched
   most recently with that alias wins.
3. **Exact native id**: the model part alone (``gpt-4o``, ``gpt-4o-2024-08-06``).
4. **Alias table** (``NAME_ALIASES`` below): provider names that no source lists, chiefly
   Mistral's ``-latest`` names and dated names of models OpenRouter lists under another id.
   The target is then resolved by this same rule.
5. **Normalised**: lower case, ``.`` and ``_`` -> ``-``, a trailing date (``-20250929``,
   ``-2025-09-29``, ``-09-29``), a trailing ``-v1:0``-style revision and an OpenRouter
   ``:variant`` removed, on both sides (``claude-sonnet-4-5-20250929`` ==
   ``claude-sonnet-4.5``).
6. **-latest rule**: ``<family>-latest`` not in the table -> the model ``<family>-<YYMM>`` with
   the newest ``YYMM`` in the book (``codestral-latest`` -> ``codestral-2508``).
7. **Dated-snapshot rule**: ``<family>-<YYMM>`` -> a model of that family whose id or alias
   ends in the same ``-<YYMM>`` (``mistral-small-2503`` -> ``mistral-small-3.1-24b-instruct``,
   canonical slug ``mistral-small-3.1-24b-instruct-2503``).

Among several candidates of one step: those of the hinted provider (when a hint is given);
then non-Bedrock before Bedrock (Bedrock prices only apply to Bedrock ids or hints); then the
candidate whose normalised id is the shortest (the base model rather than a variant), then
whose raw id is the shortest (the undated id rather than a dated snapshot); then the
lexicographically smallest ``provider/model``. Never by chance, never by insertion order.

A provider hint restricts every step to that provider (``gemini`` -> ``google``, ``mistral`` ->
``mistralai``, ``aws`` -> ``bedrock``); the gateways ``openrouter`` and ``litellm`` restrict
nothing, since they resell the vendor's model at the vendor's price.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BEDROCK_GEOS",
    "NAME_ALIASES",
    "PROVIDER_HINTS",
    "BedrockId",
    "Resolution",
    "latest_family",
    "normalise",
    "parse_bedrock",
    "provider_hint",
    "snapshot_family",
    "strip_route_prefix",
]

BEDROCK_GEOS = ("us-gov", "us", "eu", "apac", "jp", "au", "ca", "global")
BEDROCK_VENDORS = (
    "anthropic", "amazon", "meta", "mistral", "cohere", "ai21", "deepseek", "openai", "qwen",
    "writer", "twelvelabs", "stability", "luma", "moonshot", "minimax", "google", "nvidia",
)
_ARN = re.compile(
    r"^arn:aws[a-z-]*:bedrock:(?P<region>[a-z0-9-]*):(?P<account>\d*):"
    r"(?P<kind>inference-profile|application-inference-profile|foundation-model|"
    r"provisioned-model|custom-model)/(?P<id>.+)$"
)
_GEO_PREFIX = re.compile(r"^(?P<geo>" + "|".join(BEDROCK_GEOS) + r")\.(?P<rest>[a-z0-9-]+\..+)$")
_VENDOR_ID = re.compile(r"^(?:" + "|".join(BEDROCK_VENDORS) + r")\.[a-z0-9]")
_DATE_SUFFIX = re.compile(r"(-\d{8}|-\d{4}-\d{2}-\d{2}|-\d{2}-\d{2})$")
_REVISION_SUFFIX = re.compile(r"(-v\d+(:\d+)?|:\d+)$")

# provider hints callers use -> the provider names the book stores
PROVIDER_HINTS: dict[str, str | None] = {
    "openai": "openai",
    "azure": "openai",
    "azure_openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "gemini": "google",
    "google-genai": "google",
    "vertex": "google",
    "vertex_ai": "google",
    "mistral": "mistralai",
    "mistralai": "mistralai",
    "bedrock": "bedrock",
    "aws": "bedrock",
    "aws-bedrock": "bedrock",
    # gateways resell the vendor's model at the vendor's list price: no restriction
    "openrouter": None,
    "litellm": None,
}


# Step 4 of the rule. Mistral's API answers with the name the caller used, so ``-latest`` names
# and dated names reach the book as-is; OpenRouter lists these models under other ids.
# Checked against Mistral's model documentation (versions as of 2026-08).
NAME_ALIASES: dict[str, str] = {
    "mistral-large-latest": "mistralai/mistral-large-2512",
    "mistral-medium-latest": "mistralai/mistral-medium-3-5",
    "mistral-medium-2508": "mistralai/mistral-medium-3.1",
    "mistral-medium-2505": "mistralai/mistral-medium-3",
    "mistral-small-latest": "mistralai/mistral-small-2603",
    "mistral-small-2506": "mistralai/mistral-small-3.2-24b-instruct",
    "mistral-small-2503": "mistralai/mistral-small-3.1-24b-instruct",
    "mistral-small-2501": "mistralai/mistral-small-24b-instruct-2501",
    "mistral-large-2411": "mistralai/mistral-large",
    "codestral-latest": "mistralai/codestral-2508",
    "ministral-3b-latest": "mistralai/ministral-3b-2512",
    "ministral-8b-latest": "mistralai/ministral-8b-2512",
    "ministral-14b-latest": "mistralai/ministral-14b-2512",
    "open-mistral-nemo": "mistralai/mistral-nemo",
    "mistral-saba-latest": "mistralai/mistral-saba",
    "mistral-embed": "mistralai/mistral-embed-2312",
    "voxtral-small-latest": "mistralai/voxtral-small-24b-2507",
    "voxtral-mini-latest": "mistralai/voxtral-mini-3b-2507",
}

_LATEST = re.compile(r"^(?P<family>[a-z0-9][a-z0-9.-]*?)-latest$")
_SNAPSHOT = re.compile(r"^(?P<family>[a-z][a-z0-9.-]*?)-(?P<date>\d{4})$")
_ROUTE = re.compile(r"^bedrock/(?:converse/|invoke/)?(?P<id>.+)$", re.IGNORECASE)


def latest_family(bare: str) -> str | None:
    """``mistral-large-latest`` -> ``mistral-large`` (step 6)."""
    m = _LATEST.match(bare)
    return m.group("family") if m else None


def snapshot_family(bare: str) -> tuple[str, str] | None:
    """``mistral-small-2503`` -> (``mistral-small``, ``2503``): a 4-digit YYMM date (step 7)."""
    m = _SNAPSHOT.match(bare)
    if not m:
        return None
    date = m.group("date")
    return (m.group("family"), date) if 1 <= int(date[2:]) <= 12 else None


def strip_route_prefix(name: str) -> str | None:
    """The Bedrock id of a LiteLLM route (``bedrock/us.anthropic...``), else ``None``."""
    m = _ROUTE.match(name)
    return m.group("id") if m else None


def provider_hint(hint: str | None) -> str | None:
    """The book's provider name for a caller's hint (``gemini`` -> ``google``)."""
    if hint is None:
        return None
    key = hint.strip().lower()
    return PROVIDER_HINTS.get(key, key)


def normalise(name: str) -> str:
    """Compare-form of a model id: see step 4 of the module rule."""
    out = name.strip().lower()
    if "/" in out:
        out = out.rsplit("/", 1)[1]
    out = out.lstrip("~")
    if ":" in out and not _REVISION_SUFFIX.search(out):
        out = out.split(":", 1)[0]  # OpenRouter variant suffix such as ':batch' or ':free'
    out = _REVISION_SUFFIX.sub("", out)
    out = out.replace(".", "-").replace("_", "-")
    out = _DATE_SUFFIX.sub("", out)
    return out


@dataclass(frozen=True, slots=True)
class BedrockId:
    model: str  # the foundation-model id, prefix removed: anthropic.claude-...-v1:0
    geo: str | None  # global / us / eu / ... ; None for an in-region id
    region: str | None  # from an ARN


def parse_bedrock(name: str, *, hinted: bool) -> BedrockId | None:
    """Recognise a Bedrock model id, inference-profile id or ARN (step 1 of the rule)."""
    raw = name.strip()
    region: str | None = None
    m = _ARN.match(raw)
    if m:
        region = m.group("region") or None
        raw = m.group("id")
        hinted = True
    g = _GEO_PREFIX.match(raw)
    if g:
        return BedrockId(g.group("rest"), g.group("geo"), region)
    if hinted or (_VENDOR_ID.match(raw) and ("-v" in raw or ":" in raw)):
        return BedrockId(raw, None, region)
    return None


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a requested name was resolved; ``explain`` is what ``prices show --explain`` prints."""

    requested: str
    provider: str | None
    model: str | None
    step: str
    candidates: tuple[str, ...] = ()
    geo: str | None = None
    region: str | None = None

    @property
    def found(self) -> bool:
        return self.model is not None

    def explain(self) -> str:
        if not self.found:
            return f"{self.requested!r}: no model in the price book matches ({self.step})"
        text = f"{self.requested!r} -> {self.provider}/{self.model} by {self.step}"
        if self.geo:
            text += f"; Bedrock geography {self.geo}"
        if self.region:
            text += f"; region {self.region}"
        if len(self.candidates) > 1:
            text += f"; chosen among {', '.join(self.candidates)} by the tie rule"
        return text
