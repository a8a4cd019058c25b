"""Agent runs: calls grouped under one run id, with running totals and an optional USD budget.

``with meter.run("run-42", customer="acme", budget_usd="2.00") as run:`` — every call made
inside the block (in this thread or asyncio task, and in tasks it spawns) carries ``run_id`` and
its step index (1, 2, ... in start order; the attempts of one call share its step). ``run``
keeps the cumulative input/output tokens, cost, tool calls and attempt count. With a budget,
the call that would *start* once the run has spent the budget raises ``jevons.BudgetExceeded``
before the provider is called (unpriced calls add nothing to the spend and are counted in
``run.unpriced_calls``).
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from decimal import Decimal
from typing import TYPE_CHECKING

from jevons.capture.attribution import Attribution
from jevons.capture.errors import BudgetExceeded

if TYPE_CHECKING:
    from jevons.events import Event

__all__ = ["Run", "current_run"]

_ZERO = Decimal(0)
_RUN: ContextVar[Run | None] = ContextVar("jevons_run", default=None)


def current_run() -> Run | None:
    return _RUN.get()


class Run:
    """One agent run's running totals. Thread-safe; read its attributes at any time."""

    def __init__(self, run_id: str, attribution: Attribution, budget_usd: Decimal | None) -> None:
        self.run_id = run_id
        self.attribution = attribution
        self.budget_usd = budget_usd
        self.steps = 0  # calls started
        self.attempts = 0  # events recorded (a retried call records several)
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = _ZERO
        self.tool_calls = 0
        self.unpriced_calls = 0
        self.failed_attempts = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"Run({self.run_id!r}, steps={self.steps}, input={self.input_tokens}, "
                f"output={self.output_tokens}, cost_usd={self.cost_usd})")

    @property
    def remaining_usd(self) -> Decimal | None:
        return None if self.budget_usd is None else self.budget_usd - self.cost_usd

    def next_step(self, *, check_budget: bool = True) -> int:
        """Check the budget (unless told not to), then hand out the next step index."""
        with self._lock:
            if check_budget and self.budget_usd is not None and self.cost_usd >= self.budget_usd:
                raise BudgetExceeded(self.run_id, self.budget_usd, self.cost_usd)
            self.steps += 1
            return self.steps

    def add(self, event: Event) -> None:
        with self._lock:
            self.attempts += 1
            self.input_tokens += event.usage.input_tokens
            self.output_tokens += event.usage.output_tokens
            self.tool_calls += event.usage.tool_calls
            if event.status != "ok":
                self.failed_attempts += 1
            total = event.cost.total_usd
            if total is None:
                self.unpriced_calls += 1
            else:
                self.cost_usd += total

    def totals(self) -> dict[str, object]:
        with self._lock:
            return {
                "run_id": self.run_id,
                "steps": self.steps,
                "attempts": self.attempts,
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "cost_usd": self.cost_usd,
                "tool_calls": self.tool_calls,
                "unpriced_calls": self.unpriced_calls,
                "failed_attempts": self.failed_attempts,
                "budget_usd": self.budget_usd,
            }
