"""Billing periods (calendar months, UTC) and their plan segments.

A segment is a stretch of a period with one policy version and one plan for the customer; a
plan change or a new policy version inside a period starts a new segment. Fees, commitments
and allowances are prorated by the segment's share of the period (by day when changes fall
on midnight, which is what TOML dates give; by the second otherwise).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise

from jevons.policy.loader import PolicySet
from jevons.policy.model import Plan, Policy

__all__ = ["Segment", "next_period", "period_bounds", "period_of", "period_range", "segments"]

_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


def period_of(at: datetime) -> str:
    at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    return f"{at.year:04d}-{at.month:02d}"


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """``[start, end)`` of a ``YYYY-MM`` period in UTC."""
    m = _PERIOD.match(period)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"period {period!r} is not YYYY-MM")
    year, month = int(m.group(1)), int(m.group(2))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def next_period(period: str) -> str:
    return period_of(period_bounds(period)[1])


def period_range(first: str, last: str) -> list[str]:
    out = [first]
    while out[-1] < last:
        out.append(next_period(out[-1]))
    return out


@dataclass(frozen=True, slots=True)
class Segment:
    index: int
    start: datetime
    end: datetime
    policy: Policy
    plan_name: str
    plan: Plan

    @property
    def seconds(self) -> Decimal:
        return Decimal(int((self.end - self.start).total_seconds()))

    def covers(self, at: datetime) -> bool:
        return self.start <= at < self.end


def segments(policies: PolicySet, customer: str | None, period: str) -> list[Segment]:
    start, end = period_bounds(period)
    cuts = {start, end, *policies.boundaries(start, end)}
    for pol in policies.versions:
        for starts, _name in pol.plan_segments(customer):
            if starts is not None and start < starts < end:
                cuts.add(starts)
    points = sorted(cuts)
    out: list[Segment] = []
    for a, b in pairwise(points):
        try:
            pol = policies.at(a)
            name = pol.plan_at(customer, a)
        except LookupError:
            continue  # not on any plan yet: nothing is billed for this stretch
        if out and out[-1].policy is pol and out[-1].plan_name == name:
            last = out[-1]
            out[-1] = Segment(last.index, last.start, b, pol, name, last.plan)
            continue
        out.append(Segment(len(out), a, b, pol, name, pol.plan_for(customer, name)))
    return out
