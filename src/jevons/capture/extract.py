"""Raw usage extraction: a provider's response (dict or SDK object) -> canonical ``Usage``.

This module only dispatches. Each adapter module (``jevons.capture.adapters.<provider>``)
registers its extractors here with ``register_extractor(provider, api, fn)``; the module is
imported on the first request for its provider, so ``usage_from_response`` never imports an SDK
that is not used.

An extractor is ``fn(response, model) -> Extracted``. It must accept both the JSON dict form and
the SDK's object form of a response (``field(response, "usage")`` reads either), convert the
provider's semantics into canonical usage (see ``jevons.usage``) and raise (any exception) on a
shape it does not know: the caller turns that into an event flagged for review.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from importlib import import_module
from typing import Any

from jevons.usage import Usage

__all__ = [
    "PROVIDER_MODULES",
    "Extracted",
    "Extractor",
    "UnknownShape",
    "as_dict",
    "extract",
    "field",
    "fields_of",
    "get_extractor",
    "register_extractor",
    "to_int",
    "usage_from_response",
    "without_none",
]


class UnknownShape(ValueError):
    """A response whose usage block an extractor does not recognise."""


@dataclass(slots=True)
class Extracted:
    """What an extractor read from one response (or one finished stream)."""

    usage: Usage
    model: str | None = None  # the model the provider says it served
    complete: bool = True  # False: the usage is a lower bound (stream cut off, no usage block)
    needs_review: bool = False
    raw_usage: dict[str, Any] | None = None
    gateway_cost_usd: Decimal | None = None
    service_tier: str | None = None
    region: str | None = None
    note: str | None = None
    # the attempt status the response itself reports, when it is not ``ok`` although no exception
    # was raised (e.g. a Responses stream ending in ``response.failed``)
    status: str | None = None


Extractor = Callable[[Any, "str | None"], Extracted]

# provider name -> module whose import registers its extractors
PROVIDER_MODULES: dict[str, str] = {
    "openai": "jevons.capture.adapters.openai",
    "azure": "jevons.capture.adapters.openai",
    "openrouter": "jevons.capture.adapters.openrouter",
    "litellm": "jevons.capture.adapters.litellm",
    "anthropic": "jevons.capture.adapters.anthropic",
    "bedrock": "jevons.capture.adapters.bedrock",
    "gemini": "jevons.capture.adapters.gemini",
    "google": "jevons.capture.adapters.gemini",
    "mistral": "jevons.capture.adapters.mistral",
    "mistralai": "jevons.capture.adapters.mistral",
}

_EXTRACTORS: dict[tuple[str, str | None], Extractor] = {}


def register_extractor(provider: str, api: str | None, fn: Extractor, *, default: bool = False) -> None:
    """Register ``fn`` for ``(provider, api)``; ``default=True`` also makes it the one used
    when ``usage_from_response`` is called without ``api`` (it may detect the API itself)."""
    _EXTRACTORS[(provider, api)] = fn
    if default:
        _EXTRACTORS[(provider, None)] = fn


def get_extractor(provider: str, api: str | None = None) -> Extractor:
    key = (provider, api)
    fn = _EXTRACTORS.get(key)
    if fn is None:
        module = PROVIDER_MODULES.get(provider)
        if module is not None:
            import_module(module)
        fn = _EXTRACTORS.get(key)
    if fn is None:
        apis = sorted(a for p, a in _EXTRACTORS if p == provider and a)
        if not apis:
            raise ValueError(f"no usage extractor for provider {provider!r} "
                             f"(known: {sorted({p for p, _ in _EXTRACTORS} | set(PROVIDER_MODULES))})")
        raise ValueError(f"provider {provider!r} has no API {api!r} (known: {apis})")
    return fn


def extract(provider: str, response: Any, *, api: str | None = None, model: str | None = None) -> Extracted:
    return get_extractor(provider, api)(response, model)


def usage_from_response(
    provider: str, response: Any, *, api: str | None = None, model: str | None = None
) -> Usage:
    """Canonical usage of one response, given as a dict (parsed JSON) or as the SDK's object.

    ``provider``: ``openai``, ``anthropic``, ``bedrock``, ``gemini``, ``mistral``,
    ``openrouter``; ``api`` e.g. ``chat``, ``responses``, ``messages``, ``converse``,
    ``invoke`` (omitted: the provider's default, detected from the shape where possible);
    ``model`` is needed for Bedrock ``invoke`` bodies, whose format depends on the model.
    Raises ``ValueError`` (``UnknownShape``) on a shape the adapter does not know.
    """
    return extract(provider, response, api=api, model=model).usage


# ---------------------------------------------------------------------- helpers for extractors
def field(obj: Any, name: str, default: Any = None) -> Any:
    """``obj[name]`` for a mapping, ``obj.name`` for an object; ``default`` when absent/None.

    Fast on the hot path: a pydantic model's fields are read from its ``__dict__`` (and its
    extra fields from ``__pydantic_extra__``) without ``getattr``, because a *missing*
    attribute on a pydantic model costs an exception inside its ``__getattr__``.
    """
    if obj is None:
        return default
    if type(obj) is dict:
        value = obj.get(name)
    else:
        state = getattr(obj, "__dict__", None)
        if state is not None and name in state:
            value = state[name]
        elif isinstance(obj, Mapping):
            value = obj.get(name)
        elif hasattr(type(obj), "__pydantic_fields__") and not name.startswith("_"):
            extra = obj.__pydantic_extra__
            if extra and name in extra:
                value = extra[name]
            elif hasattr(type(obj), name):  # a property or other class-level attribute
                value = getattr(obj, name, None)
            else:
                value = None
        else:
            value = getattr(obj, name, None)
    return default if value is None else value


_NO_FIELDS: Mapping[str, Any] = {}


class _AttrView(Mapping[str, Any]):
    """Read-only mapping over an object's attributes (for SDK objects that are not pydantic)."""

    __slots__ = ("_obj",)

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self._obj, name)
        except AttributeError:
            raise KeyError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self._obj, name, default)

    def __iter__(self) -> Any:
        return iter(k for k in dir(self._obj) if not k.startswith("_"))

    def __len__(self) -> int:
        return sum(1 for _ in self)


_MAPPING, _PYDANTIC, _OBJECT = 0, 1, 2
_KINDS: dict[type, int] = {dict: _MAPPING}  # type -> how fields_of reads it


def _kind_of(klass: type) -> int:
    if issubclass(klass, Mapping):
        kind = _MAPPING
    elif hasattr(klass, "__pydantic_fields__"):
        kind = _PYDANTIC
    else:
        kind = _OBJECT
    if len(_KINDS) < 4096:
        _KINDS[klass] = kind
    return kind


def fields_of(obj: Any) -> Mapping[str, Any]:
    """A read-only mapping of ``obj``'s fields (dict, pydantic model or plain object), to read
    many fields of one block cheaply with ``.get(name)``; ``{}`` for ``None``.

    The kind of each type is remembered: an ``isinstance(obj, Mapping)`` per block would run
    the ABC machinery on every call of the hot path."""
    if obj is None:
        return _NO_FIELDS
    klass = type(obj)
    kind = _KINDS.get(klass)
    if kind is None:
        kind = _kind_of(klass)
    if kind == _PYDANTIC:
        state: dict[str, Any] = obj.__dict__
        extra = obj.__pydantic_extra__
        return {**state, **extra} if extra else state
    if kind == _MAPPING:
        return obj  # type: ignore[no-any-return]
    return _AttrView(obj)


def to_int(value: Any) -> int:
    """A token count from JSON/SDK (``None`` -> 0); refuses non-integral values."""
    if type(value) is int:
        return value
    if value is None:
        return 0
    if isinstance(value, bool):
        raise UnknownShape(f"token count {value!r} is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise UnknownShape(f"token count {value!r} is not an integer")


def as_dict(obj: Any) -> dict[str, Any] | None:
    """A JSON-able dict of a usage block (for ``Event.raw_usage``), or ``None``."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        try:
            out = dump(mode="json", exclude_none=True)
            if isinstance(out, dict):
                return out
        except Exception:
            pass
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        try:
            out = to_dict()
            if isinstance(out, dict):
                return {str(k): _plain(v) for k, v in out.items()}
        except Exception:
            pass
    if hasattr(obj, "__dict__"):
        return {k: _plain(v) for k, v in vars(obj).items() if not k.startswith("_")}
    return {"repr": repr(obj)}


def without_none(value: Any, key: Callable[[str], str] | None = None) -> Any:
    """A JSON value with its null fields dropped at every level, and its keys renamed by
    ``key`` (e.g. to camelCase): a usage block as the provider's API sends it, whether the
    caller holds that JSON or a snapshot of the SDK's object (which has every declared field)."""
    if isinstance(value, Mapping):
        return {(str(k) if key is None else key(str(k))): without_none(v, key)
                for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [without_none(v, key) for v in value]
    return value


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    return as_dict(value)
