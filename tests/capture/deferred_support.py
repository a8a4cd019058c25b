"""Shared by the deferred-capture tests: the durable meter's log lines, event equality, and the
calls that took the general path."""

from __future__ import annotations

from typing import Any

import pytest

from jevons.capture.meter import Meter
from jevons.events import Event
from jevons.ledger.journal import JournaledStore


def log_lines(meter: Meter) -> list[bytes]:
    """The lines of the meter's append log, in order (capture lines start ``["C1",``)."""
    store = meter.store
    assert isinstance(store, JournaledStore) and store._log is not None
    data = store._log.read(0, store._log.written)
    return [line for line in data.split(b"\n") if line]


def same_event(a: Event, b: Event) -> None:
    """Everything but the id and the time (made per event) is equal."""
    for name in ("provider", "api", "model_requested", "model", "usage", "raw_usage", "customer",
                 "feature", "tags", "status", "attempt", "usage_complete", "gateway_cost_usd",
                 "needs_review", "error", "service_tier", "region", "run_id", "step"):
        assert getattr(a, name) == getattr(b, name), name
    assert (a.cost.status, a.cost.total_usd, a.cost.price_version, a.cost.lines) == (
        b.cost.status, b.cost.total_usd, b.cost.price_version, b.cost.lines)


def begun(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models of the calls that go through ``Meter.begin`` (the general path) from now on,
    spied before the client is wrapped: a call on the direct path adds none."""
    models: list[str] = []
    begin = meter.begin

    def spy(*args: Any, **kwargs: Any) -> Any:
        models.append(args[2])
        return begin(*args, **kwargs)

    monkeypatch.setattr(meter, "begin", spy)
    return models
