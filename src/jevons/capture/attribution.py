"""Who a call is billed to: customer, feature and tags, from four places.

Precedence, field by field (the first that sets a field wins; tags merge key by key in the
same order):

1. **per call** — keyword arguments the wrapper removes before the provider sees them:
   ``jevons_customer=``, ``jevons_feature=``, ``jevons_tags=`` or one ``jevons={...}`` dict
   with the keys ``customer``, ``feature``, ``tags``;
2. **per wrapped client** — ``meter.wrap(client, customer=..., feature=..., tags=...)``;
3. **per context** — ``with meter.context(customer=...)`` (a ``contextvars`` value: each thread
   and each asyncio task sees its own; nested contexts override field by field), and the
   enclosing ``meter.run(..., customer=...)``;
4. **the meter's default** — ``Meter(customer=..., feature=..., tags=...)``.

A call with no customer after all four is kept as *unattributed* (``Event.customer is None``)
and counted in ``meter.stats()``; it is never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from jevons.events import name_or_none

__all__ = [
    "CALL_KWARGS",
    "EMPTY",
    "Attribution",
    "attribution_context",
    "current_context",
    "pop_call_attribution",
]


@dataclass(frozen=True, slots=True)
class Attribution:
    customer: str | None = None
    feature: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def as_bundle(self) -> dict[str, Any]:
        """The ``jevons={...}`` keyword argument that carries this attribution to a call."""
        return {"customer": self.customer, "feature": self.feature, "tags": dict(self.tags)}

    def over(self, base: Attribution | None) -> Attribution:
        """This attribution with ``base`` filling the fields it leaves unset."""
        if base is None or base is EMPTY:
            return self
        if self is EMPTY:
            return base
        if base.tags and self.tags:
            tags: Mapping[str, str] = {**base.tags, **self.tags}
        else:
            tags = self.tags or base.tags
        return Attribution(
            self.customer if self.customer is not None else base.customer,
            self.feature if self.feature is not None else base.feature,
            tags,
        )

    @property
    def is_empty(self) -> bool:
        return self.customer is None and self.feature is None and not self.tags


EMPTY = Attribution()

CALL_KWARGS = ("jevons", "jevons_customer", "jevons_feature", "jevons_tags")
"""Keyword arguments a wrapped method removes before calling the provider."""
_CALL_KWARG_NAMES = frozenset(CALL_KWARGS)

_CONTEXT: ContextVar[Attribution] = ContextVar("jevons_attribution", default=EMPTY)


def make(
    customer: str | None = None, feature: str | None = None, tags: Mapping[str, Any] | None = None
) -> Attribution:
    """An attribution; a blank customer or feature (``""``, spaces) is none: an event with a
    blank customer is unattributed (held back from billing and reported), never billed to a
    subscription named ``""``."""
    customer = name_or_none(customer)
    feature = name_or_none(feature)
    if customer is None and feature is None and not tags:
        return EMPTY
    return Attribution(
        customer,
        feature,
        {str(k): str(v) for k, v in tags.items()} if tags else {},
    )


def pop_call_attribution(kwargs: MutableMapping[str, Any],
                         on_error: Callable[[BaseException, str], Any] | None = None) -> Attribution | None:
    """Remove the ``jevons*`` keyword arguments from ``kwargs``; ``None`` when there were none.

    Cheap when there are none (the common case): one C call. Malformed ones
    raise, unless ``on_error`` is given (a wrapped call must not break on them): then they are
    all removed, the error goes to ``on_error(exc, "attribution")`` and the result is ``None``.
    """
    if _CALL_KWARG_NAMES.isdisjoint(kwargs):
        return None
    try:
        bundle = kwargs.pop("jevons", None) or {}
        if not isinstance(bundle, Mapping):
            raise TypeError("jevons= must be a dict with keys customer, feature, tags")
        unknown = set(bundle) - {"customer", "feature", "tags"}
        if unknown:
            raise TypeError(f"jevons= has unknown key(s) {sorted(unknown)}")
        customer = kwargs.pop("jevons_customer", None)
        feature = kwargs.pop("jevons_feature", None)
        tags = dict(bundle.get("tags") or {})
        tags.update(kwargs.pop("jevons_tags", None) or {})
        return make(
            customer if customer is not None else bundle.get("customer"),
            feature if feature is not None else bundle.get("feature"),
            tags,
        )
    except Exception as exc:
        if on_error is None:
            raise
        for key in CALL_KWARGS:
            kwargs.pop(key, None)
        on_error(exc, "attribution")
        return None


def current_context() -> Attribution:
    return _CONTEXT.get()


@contextmanager
def attribution_context(attribution: Attribution) -> Iterator[Attribution]:
    """Set ``attribution`` (over the enclosing context) for the ``with`` block."""
    merged = attribution.over(_CONTEXT.get())
    token = _CONTEXT.set(merged)
    try:
        yield merged
    finally:
        _CONTEXT.reset(token)
