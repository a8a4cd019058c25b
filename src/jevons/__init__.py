"""jevons: what each LLM call really cost, and what to bill for it.

The public API. Light names are imported eagerly; heavier layers load on first use so that
``import jevons`` stays fast.
"""

from __future__ import annotations

from datetime import datetime
from importlib import import_module
from typing import TYPE_CHECKING, Any

from jevons.events import Event
from jevons.prices.book import PriceBook
from jevons.prices.cost import Cost, CostLine
from jevons.prices.model import Dim, PriceVersion, ServiceTier
from jevons.usage import Usage

if TYPE_CHECKING:
    from jevons.capture.errors import BudgetExceeded, CapReached
    from jevons.capture.extract import usage_from_response
    from jevons.capture.meter import Meter

__version__ = "0.1.0"

__all__ = [
    "BudgetExceeded",
    "CapReached",
    "Cost",
    "CostLine",
    "Dim",
    "Event",
    "Meter",
    "PriceBook",
    "PriceVersion",
    "ServiceTier",
    "Usage",
    "__version__",
    "cost",
    "default_book",
    "usage_from_response",
]

_LAZY = {
    "Meter": "jevons.capture.meter",
    "BudgetExceeded": "jevons.capture.errors",
    "CapReached": "jevons.capture.errors",
    "usage_from_response": "jevons.capture.extract",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jevons' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def default_book() -> PriceBook:
    """The process-wide price book: bundled snapshot, cached live prices, user overrides."""
    from jevons.prices.loader import default_book as _default_book

    return _default_book()


def cost(
    model: str,
    usage: Usage,
    *,
    provider: str | None = None,
    at: datetime | None = None,
    tier: str | None = None,
    region: str | None = None,
) -> Cost:
    """Exact cost of one call from the default price book. Never a silent $0: an unknown model
    gives ``status='unpriced'`` (``total_usd=None``) or ``'estimated'`` with a fallback class."""
    return default_book().cost(model, usage, provider=provider, at=at, tier=tier, region=region)
