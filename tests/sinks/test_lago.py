"""The Lago sink: request bodies valid against Lago's OpenAPI spec, token and price modes,
unpriced events held (never $0) until re-priced."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS31Validator

from jevons.ledger.database import SQLLedger
from jevons.prices.cost import Cost
from jevons.sinks.base import Hold
from jevons.sinks.lago import LagoSink, default_amount_for
from jevons.sinks.outbox import Outbox, RetryPolicy
from jevons.usage import Usage
from ledger.helpers import make_event

from .fakes import FakeBilling

# computed here: ``from conftest import ...`` picks up whichever conftest module was imported
# first under that name when the whole suite runs
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@cache
def _validator() -> OAS31Validator:
    spec_path: Path = SHARED_DATA / "lago" / "openapi.yaml"
    spec = yaml.load(spec_path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schema = {"$ref": "#/components/schemas/EventBatchInput", "components": spec["components"]}
    return OAS31Validator(schema)


def assert_valid_lago_batch(body: Any) -> None:
    errors = sorted(_validator().iter_errors(body), key=str)
    assert not errors, "\n".join(e.message for e in errors[:5])
    assert len(body["events"]) <= 100


def test_contract_validator_rejects_a_bad_body() -> None:
    """The contract check can fail: a missing code and a nested property are refused."""
    bad = {"events": [{"transaction_id": "t", "external_subscription_id": "s",
                       "properties": {"nested": {"a": 1}}}]}
    assert list(_validator().iter_errors(bad))
    ints = {"events": [{"transaction_id": "t", "external_subscription_id": "s", "code": "c",
                        "properties": {"tokens": 5}}]}  # integer matches two oneOf branches
    assert list(_validator().iter_errors(ints))


def test_token_mode_records() -> None:
    sink = LagoSink("lago", "http://x", None, metric_codes={"output": "my_out"})
    usage = Usage(input_tokens=1000, output_tokens=300, cache_read_tokens=600, cache_write_5m_tokens=100,
                  reasoning_tokens=50)
    recs = sink.prepare(make_event(1, key="K", usage=usage, customer="sub_9"))
    assert not isinstance(recs, Hold)
    by_code = {r["code"]: r for r in recs}
    assert set(by_code) == {"llm_input_tokens", "llm_cached_input_tokens", "llm_cache_write_tokens", "my_out"}
    assert by_code["llm_input_tokens"]["properties"]["tokens"] == "300"  # uncached only
    assert by_code["llm_cached_input_tokens"]["properties"]["tokens"] == "600"
    assert by_code["my_out"]["properties"]["tokens"] == "300"  # reasoning is inside output
    assert {r["transaction_id"] for r in recs} == {f"K:{c}" for c in by_code}
    assert all(r["external_subscription_id"] == "sub_9" for r in recs)
    assert_valid_lago_batch({"events": recs})


def test_price_mode_amount_breakdown_and_version() -> None:
    sink = LagoSink("lago", "http://x", None, mode="price",
                    amount_for=default_amount_for(Decimal("1.5")))
    e = make_event(1, key="K")
    (rec,) = sink.prepare(e)  # type: ignore[misc]
    assert rec["transaction_id"] == "K" and rec["code"] == "llm_cost"
    assert e.cost.total_usd is not None
    assert Decimal(rec["precise_total_amount_cents"]) == e.cost.total_usd * Decimal("1.5") * 100
    assert rec["properties"]["price_version"] == "openai/gpt-4o@2026-01-01"
    assert Decimal(rec["properties"]["cost_usd"]) == e.cost.total_usd
    assert rec["properties"]["output_tokens"] == "200"
    assert_valid_lago_batch({"events": [rec]})


def test_unpriced_event_is_held_not_sent_as_zero() -> None:
    sink = LagoSink("lago", "http://x", None, mode="price")
    held = sink.prepare(make_event(1, priced=False))
    assert isinstance(held, Hold) and held.reason == "waiting_for_price"
    # even an amount_for that would bill something (a policy's flat fee) does not bill it yet
    flat = LagoSink("lago", "http://x", None, mode="price", amount_for=lambda e: Decimal("0.5"))
    assert isinstance(flat.prepare(make_event(1, priced=False)), Hold)
    assert isinstance(sink.prepare(make_event(2, customer=None)), Hold)
    # token mode needs no price: it sends the tokens
    assert not isinstance(LagoSink("lago", "http://x", None).prepare(make_event(3, priced=False)), Hold)


@pytest.mark.parametrize("mode", ["token", "price"])
def test_every_request_body_matches_the_spec(ledger: SQLLedger, mode: str) -> None:
    ledger.append_many([make_event(i, customer=f"sub_{i % 3}") for i in range(250)])
    with FakeBilling() as fake:
        sink = LagoSink("lago", fake.url, "lago-key", mode=mode)
        report = Outbox(ledger, {"lago": sink}).drain("lago")
        sink.close()
    assert report.delivered == 250 and report.stopped is None
    assert fake.state.bodies
    for body in fake.state.bodies:
        assert_valid_lago_batch(body)
    per_event = 1 if mode == "price" else 3
    assert len(fake.keys) == 250 * per_event


def test_held_events_are_released_by_reprice(ledger: SQLLedger) -> None:
    ledger.append_many([make_event(0, key="priced"), make_event(1, key="later", priced=False)])
    with FakeBilling() as fake:
        box = Outbox(ledger, {"lago": LagoSink("lago", fake.url, None, mode="price")})
        first = box.drain("lago")
        assert first.delivered == 1 and first.held == 1
        assert fake.keys == {"priced"}
        (st,) = box.status()
        assert st.waiting_for_price == 1 and st.pending == 0
        ((seq, _),) = ledger.unpriced()
        ledger.reprice([(seq, Cost("gpt-4o", "gpt-4o", "openai", "priced", Decimal("0.01"),
                                   price_version="v2"))])
        second = box.drain("lago")
        assert second.released == 1
        assert fake.keys == {"priced", "later"}
        assert fake.state.received["later"]["precise_total_amount_cents"] == "1"
        assert box.status()[0].waiting_for_price == 0
        box.close()


def test_lago_duplicate_422_counts_as_delivered(ledger: SQLLedger) -> None:
    """A Lago that answers 422 value_already_exist for a known transaction_id (its PostgreSQL
    pipeline) must not dead-letter a resent event."""
    events = [make_event(i) for i in range(5)]
    ledger.append_many(events)
    with FakeBilling() as fake:
        fake.state.duplicate_422 = True
        sink = LagoSink("lago", fake.url, None, mode="price")
        sink.send([sink.prepare(events[0])[0]])  # type: ignore[index]  # delivered earlier
        report = Outbox(ledger, {"lago": sink}, retry=RetryPolicy(base_s=0)).drain("lago")
        assert report.delivered == 5 and report.dead_lettered == 0
        assert len(fake.keys) == 5
        assert json.dumps(fake.state.bodies)  # bodies were recorded


def test_price_mode_amount_is_cut_to_lagos_stored_precision() -> None:
    """Lago keeps precise_total_amount_cents as numeric(40,15): a policy amount with more digits
    (a floor's 1/(1-f) at 80 digits) is rounded half-even to 15 places of a cent, no further."""
    third = Decimal(1) / Decimal(3)  # 0.333... USD at the context precision
    sink = LagoSink("lago", "http://x", None, mode="price", amount_for=lambda e: third)
    (rec,) = sink.prepare(make_event(1, key="K"))  # type: ignore[misc]
    assert rec["precise_total_amount_cents"] == "33.333333333333333"
    assert Decimal(rec["properties"]["amount_usd"]) == third  # the exact amount rides along
    assert_valid_lago_batch({"events": [rec]})
