"""Margin alerts: a customer crossed its floor or the margin cliff.

An alert goes to every sink: the log (``jevons.insight`` logger, WARNING) and, when configured,
a webhook (JSON POST with an ``Idempotency-Key`` header, so a receiver can drop repeats). A
state file remembers which alerts were delivered, so running the report again does not raise
the same alert twice. A sink that fails is logged and never stops the report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import httpx

__all__ = ["AlertSink", "LogAlertSink", "MarginAlert", "WebhookAlertSink", "deliver_alerts"]

log = logging.getLogger("jevons.insight")


@dataclass(frozen=True, slots=True)
class MarginAlert:
    customer: str
    period: str
    kind: str  # "cliff" (margin below 0) or "floor" (margin % below the plan's floor)
    plan: str
    margin_pct: Decimal | None
    floor: Decimal
    revenue: Decimal
    cost: Decimal
    previous_status: str | None
    at: datetime

    @property
    def idempotency_key(self) -> str:
        return f"jevons-margin:{self.customer}:{self.period}:{self.kind}"

    @property
    def message(self) -> str:
        pct = "n/a" if self.margin_pct is None else f"{self.margin_pct * 100:.1f}%"
        what = (
            "is past the margin cliff"
            if self.kind == "cliff"
            else f"is under its {self.floor * 100:.0f}% floor"
        )
        return (
            f"customer {self.customer} ({self.plan}) {what} in {self.period}: margin {pct}, "
            f"revenue ${self.revenue:.2f}, cost ${self.cost:.2f}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "jevons.margin_alert",
            "idempotency_key": self.idempotency_key,
            "customer": self.customer,
            "period": self.period,
            "kind": self.kind,
            "plan": self.plan,
            "margin_pct": None if self.margin_pct is None else str(self.margin_pct),
            "floor": str(self.floor),
            "revenue": str(self.revenue),
            "cost": str(self.cost),
            "previous_status": self.previous_status,
            "at": self.at.isoformat(),
            "message": self.message,
        }


class AlertSink(Protocol):
    def send(self, alert: MarginAlert) -> None: ...


class LogAlertSink:
    def send(self, alert: MarginAlert) -> None:
        log.warning("margin alert: %s", alert.message)


class WebhookAlertSink:
    """POST each alert as JSON to ``url`` (``Idempotency-Key`` header set)."""

    def __init__(self, url: str, *, timeout: float = 10.0, client: httpx.Client | None = None) -> None:
        self.url = url
        self._client = client or httpx.Client(timeout=timeout)

    def send(self, alert: MarginAlert) -> None:
        response = self._client.post(
            self.url, json=alert.to_dict(), headers={"Idempotency-Key": alert.idempotency_key}
        )
        response.raise_for_status()


def _load_sent(path: Path | None) -> set[str]:
    if path is None or not path.is_file():
        return set()
    try:
        return set(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return set()


def deliver_alerts(
    alerts: Sequence[MarginAlert], sinks: Sequence[AlertSink], *, state_path: Path | None = None
) -> int:
    """Send the alerts not delivered before; returns how many were sent to every sink."""
    sent = _load_sent(state_path)
    delivered = 0
    for alert in alerts:
        if alert.idempotency_key in sent:
            continue
        ok = True
        for sink in sinks:
            try:
                sink.send(alert)
            except Exception as exc:  # a failing sink never stops the report
                ok = False
                log.error("margin alert to %s failed: %s", type(sink).__name__, exc)
        if ok:
            sent.add(alert.idempotency_key)
            delivered += 1
    if state_path is not None:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(sent)), encoding="utf-8")
        tmp.replace(state_path)
    return delivered
