"""The usage event: one attempt of one LLM call, attributed, priced and ready to bill.

Every layer speaks this type: capture produces it, the ledger stores it, sinks deliver it,
the policy engine rates it. ``to_dict``/``from_dict`` give its one JSON form (Decimals as
strings, times as ISO 8601 UTC), used by the ledger, the JSONL sink and ``jevons rate``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from jevons.prices.cost import Cost
from jevons.usage import Usage

__all__ = ["AttemptStatus", "Event", "name_or_none", "new_event_id"]

AttemptStatus = Literal["ok", "error", "aborted"]


def new_event_id() -> str:
    return uuid.uuid4().hex


def name_or_none(value: object) -> str | None:
    """``value`` as a name, or ``None`` when it is none or blank (``""``, spaces): an event
    with a blank customer is unattributed, never billed to a subscription named ``""``."""
    text = None if value is None else str(value)
    return text if text and not text.isspace() else None


@dataclass(slots=True)
class Event:
    """One attempt of one call. ``idempotency_key`` is what every sink deduplicates on."""

    id: str
    idempotency_key: str
    timestamp: datetime
    provider: str
    model_requested: str
    usage: Usage
    cost: Cost
    customer: str | None = None
    feature: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    api: str | None = None
    run_id: str | None = None
    step: int | None = None
    attempt: int = 1
    status: AttemptStatus = "ok"
    usage_complete: bool = True
    gateway_cost_usd: Decimal | None = None
    needs_review: bool = False
    raw_usage: dict[str, Any] | None = None
    error: str | None = None
    region: str | None = None
    service_tier: str | None = None

    @property
    def model(self) -> str | None:
        """The resolved model the cost was computed for."""
        return self.cost.model

    @property
    def attributed(self) -> bool:
        """Whether the event names a customer to bill (a blank name is none)."""
        return name_or_none(self.customer) is not None

    def with_cost(self, cost: Cost) -> Event:
        return replace(self, cost=cost)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "idempotency_key": self.idempotency_key,
            # a naive time is UTC (as the ledger reads it): say so, for readers elsewhere
            "timestamp": (self.timestamp if self.timestamp.tzinfo is not None
                          else self.timestamp.replace(tzinfo=UTC)).isoformat(),
            "provider": self.provider,
            "model_requested": self.model_requested,
            "model": self.cost.model,
            "usage": self.usage.to_dict(compact=True),
            "cost": self.cost.to_dict(),
            "customer": self.customer,
            "feature": self.feature,
            "tags": dict(self.tags),
            "api": self.api,
            "run_id": self.run_id,
            "step": self.step,
            "attempt": self.attempt,
            "status": self.status,
            "usage_complete": self.usage_complete,
            "gateway_cost_usd": None if self.gateway_cost_usd is None else str(self.gateway_cost_usd),
            "needs_review": self.needs_review,
            "raw_usage": self.raw_usage,
            "error": self.error,
            "region": self.region,
            "service_tier": self.service_tier,
        }
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        ts = datetime.fromisoformat(d["timestamp"])
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        gw = d.get("gateway_cost_usd")
        return cls(
            id=d["id"],
            idempotency_key=d.get("idempotency_key") or d["id"],
            timestamp=ts,
            provider=d["provider"],
            model_requested=d["model_requested"],
            usage=Usage.from_dict(d["usage"]),
            cost=Cost.from_dict(d["cost"]),
            customer=d.get("customer"),
            feature=d.get("feature"),
            tags=dict(d.get("tags") or {}),
            api=d.get("api"),
            run_id=d.get("run_id"),
            step=d.get("step"),
            attempt=int(d.get("attempt", 1)),
            status=d.get("status", "ok"),
            usage_complete=bool(d.get("usage_complete", True)),
            gateway_cost_usd=None if gw is None else Decimal(gw),
            needs_review=bool(d.get("needs_review", False)),
            raw_usage=d.get("raw_usage"),
            error=d.get("error"),
            region=d.get("region"),
            service_tier=d.get("service_tier"),
        )
