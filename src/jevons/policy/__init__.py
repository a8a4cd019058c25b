"""jevons.policy: turns cost into one billable amount under a company's pricing policy.

- :mod:`jevons.policy.rules` -- every rating rule, once, for Decimals and numpy arrays alike
  (the billing engine and the stress-test simulator both compose these);
- :mod:`jevons.policy.model` / :mod:`jevons.policy.loader` -- the policy (pydantic) and its TOML
  files, with errors naming file, line and field;
- :mod:`jevons.policy.engine` -- event-by-event rating, period close, invoices;
- :mod:`jevons.policy.batch` -- fast exact batch rating (same result as the engine);
- :mod:`jevons.policy.runtime` / :mod:`jevons.policy.store` -- real-time running balances, the
  ``Meter`` sink and cap guard, atomic on SQLite and PostgreSQL.

See ``docs/policy.md`` for the order of operations and a worked example.
"""

from __future__ import annotations

from jevons.policy.engine import Alert, Grant, Invoice, InvoiceLine, PolicyEngine, RatedEvent, RatingError
from jevons.policy.loader import PolicyError, PolicySet, load_policies, load_policy, parse_policy
from jevons.policy.model import Plan, PlanClass, Policy

__all__ = [
    "Alert",
    "Grant",
    "Invoice",
    "InvoiceLine",
    "Plan",
    "PlanClass",
    "Policy",
    "PolicyEngine",
    "PolicyError",
    "PolicySet",
    "RatedEvent",
    "RatingError",
    "load_policies",
    "load_policy",
    "parse_policy",
]
