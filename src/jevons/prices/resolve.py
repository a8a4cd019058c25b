"""Model-name resolution: how a name a caller passes becomes one (provider, model) of the book.

The rule, applied in order; the first step that yields candidates decides:

1. **Bedrock form.** An ARN (``arn:aws:bedrock:REGION:ACCOUNT:inference-profile/ID`` or
   ``.../foundation-model/ID``), an id with a cross-region prefix (``us.``, ``eu.``, ``apac.``,
   ``jp.``, ``au.``, ``us-gov.``, ``global.``), or a ``vendor.model`` id with the ``bedrock``
   hint. The prefix becomes the geography (``global`` or regional), the ARN's region the region.
2. **Exact key**: ``provider/model`` as the book stores it, or a stored alias (OpenRouter id,
   ``canonical_slug``, ``~...-latest`` alias) — case-insensitive.
3. **Exact native id**: the model part alone (``gpt-4o``, ``gpt-4o-2024-08-06``).
4. **Normalised**: lower case, ``.`` -> ``-``, a trailing date (``-20250929``, ``-2025-09-29``,
   ``-09-29``) and a trailing ``-v1:0``-style revision removed, on both sides.

Among several candidates of one step: those of the hinted provider (when a hint is given);
then non-Bedrock before Bedrock (Bedrock prices only apply to Bedrock ids or hints); then the
candidate whose normalised id is the shortest (the undated base model rather than a variant);
then the lexicographically smallest ``provider/model``. Never by chance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BedrockId",
    "Resolution",
    "normalise",
    "parse_bedrock",
    "provider_hint",
    "BEDROCK_GEOS",
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
_HINTS: dict[str, str | None] = {
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


def provider_hint(hint: str | None) -> str | None:
    """The book's provider name for a caller's hint (``gemini`` -> ``google``)."""
    if hint is None:
        return None
    key = hint.strip().lower()
    return _HINTS.get(key, key)


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
    if hinted or _VENDOR_ID.match(raw) and ("-v" in raw or ":" in raw):
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
