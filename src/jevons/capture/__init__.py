"""jevons.capture: wrap provider clients, read each call's usage in canonical form, attribute it
and record it as an Event (see ``docs/capture.md``).

- ``jevons.capture.meter``: ``Meter`` (wrap, context, run, record, events, stats) and ``Call``.
- ``jevons.capture.attribution``: where customer/feature/tags come from, and their precedence.
- ``jevons.capture.run``: agent runs and USD budgets.
- ``jevons.capture.extract``: ``usage_from_response`` and the extractor registry.
- ``jevons.capture.adapters``: the adapter contract and one module per provider.
"""

from jevons.capture.errors import BudgetExceeded, CapReached, JevonsEnforcement

__all__ = ["BudgetExceeded", "CapReached", "JevonsEnforcement"]
