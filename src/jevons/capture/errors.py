"""Exceptions jevons raises into the caller's code on purpose (opt-in enforcement only)."""

from __future__ import annotations

from decimal import Decimal

__all__ = ["BudgetExceeded", "CapReached", "JevonsEnforcement"]


class JevonsEnforcement(Exception):
    """Base of the exceptions raised *before* a provider call to enforce a limit."""


class BudgetExceeded(JevonsEnforcement):
    """A run's USD budget is spent: the next call would start past it."""

    def __init__(self, run_id: str, budget_usd: Decimal, spent_usd: Decimal) -> None:
        super().__init__(f"run {run_id!r} has spent ${spent_usd} of its ${budget_usd} budget")
        self.run_id = run_id
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd


class CapReached(JevonsEnforcement):
    """A customer's usage cap for the period is reached and the policy says ``block``."""

    def __init__(self, customer: str, cap_usd: Decimal, charged_usd: Decimal) -> None:
        super().__init__(f"customer {customer!r} reached its ${cap_usd} cap (charged ${charged_usd})")
        self.customer = customer
        self.cap_usd = cap_usd
        self.charged_usd = charged_usd
