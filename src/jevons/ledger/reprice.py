"""Re-pricing: give unpriced events the cost a price that appeared since makes them.

Each event is priced again with the price book at its own timestamp (same provider, tier and
region). An event that gets a price (priced or estimated) has its cost replaced; the old cost
is kept in the ledger's cost history for audit. One that is still unpriced is left as it is.
Price-mode sinks that held the event waiting for a price send it on their next drain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from jevons.ledger.database import SQLLedger
from jevons.prices.book import PriceBook
from jevons.prices.cost import Cost

__all__ = ["RepriceReport", "reprice"]


@dataclass(slots=True)
class RepriceReport:
    examined: int = 0
    repriced: int = 0
    still_unpriced: int = 0
    by_model: dict[str, int] = field(default_factory=dict)


def reprice(
    ledger: SQLLedger,
    book: PriceBook,
    *,
    dry_run: bool = False,
    batch: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> RepriceReport:
    report = RepriceReport()
    after = 0
    while True:
        chunk = ledger.unpriced(limit=batch, after=after)
        if not chunk:
            break
        after = chunk[-1][0]
        updates: list[tuple[int, Cost]] = []
        for seq, event in chunk:
            report.examined += 1
            cost = book.cost(
                event.model_requested, event.usage, provider=event.provider, at=event.timestamp,
                tier=event.service_tier, region=event.region,
            )
            if cost.total_usd is None:
                report.still_unpriced += 1
                continue
            updates.append((seq, cost))
            key = cost.model or event.model_requested
            report.by_model[key] = report.by_model.get(key, 0) + 1
        if not dry_run:
            ledger.reprice(updates)
        report.repriced += len(updates)
        if progress is not None:
            progress(report.examined)
    return report

