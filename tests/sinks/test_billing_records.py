"""What the billing sinks send per event, and when they send nothing: usage buckets that bill
every priced token class once, one id per record, no record for a blank customer, a refused
Stripe session that stops the drain, a webhook URL kept exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from jevons.capture.meter import Meter
from jevons.config import ConfigError, load_settings
from jevons.ledger.database import SQLLedger
from jevons.sinks import build_sinks
from jevons.sinks.base import Hold
from jevons.sinks.files import WebhookSink
from jevons.sinks.lago import LagoSink
from jevons.sinks.openmeter import OpenMeterSink
from jevons.sinks.outbox import Outbox, RetryPolicy
from jevons.sinks.stripe import StripeMeterSink
from jevons.usage import Usage
from ledger.helpers import make_event

from .fakes import STRIPE_KEY, WEBHOOK_SECRET, FakeBilling

FAST = RetryPolicy(base_s=0.001, max_s=0.01, max_attempts=4)
USAGE = Usage(input_tokens=1000, output_tokens=100, cache_read_tokens=300, cache_write_5m_tokens=200,
              cache_write_1h_tokens=100)


def _counts(records: object) -> dict[str, str]:
    assert isinstance(records, list)
    return {r["code"]: r["properties"]["tokens"] for r in records}


def test_cache_writes_by_ttl_are_their_own_buckets_and_requests_are_opt_in() -> None:
    """1-hour writes cost more than 5-minute ones: one bucket could not bill both right."""
    event = make_event(1, key="K", usage=USAGE, customer="sub_1")
    assert _counts(LagoSink("l", "http://x", None).prepare(event)) == {
        "llm_input_tokens": "400", "llm_cached_input_tokens": "300", "llm_cache_write_tokens": "200",
        "llm_cache_write_1h_tokens": "100", "llm_output_tokens": "100"}
    with_requests = LagoSink("l", "http://x", None, metric_codes={"requests": "llm_requests"})
    assert _counts(with_requests.prepare(event))["llm_requests"] == "1"


def test_token_classes_with_their_own_rates_are_opt_in_buckets_carved_from_their_parent() -> None:
    """Reasoning, audio and image tokens are subsets of output / input: billed as their own
    bucket only when given a code, and then taken out of the parent, so that every token is
    billed once. Input is split by the cost core's rule (audio from the uncached input first,
    capped by it; here 800 audio tokens against 700 uncached)."""
    usage = Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=300, audio_input_tokens=800,
                  reasoning_tokens=200, audio_output_tokens=100)
    event = make_event(1, key="K", usage=usage, customer="sub_1")
    assert _counts(LagoSink("l", "http://x", None).prepare(event)) == {
        "llm_input_tokens": "700", "llm_cached_input_tokens": "300", "llm_output_tokens": "500"}
    codes = {"reasoning": "llm_reasoning_tokens", "audio_input": "llm_audio_in",
             "image_input": "llm_image_in", "audio_output": "llm_audio_out", "image_output": "llm_image_out"}
    split = LagoSink("l", "http://x", None, metric_codes=codes).prepare(event)
    assert _counts(split) == {
        "llm_audio_in": "700", "llm_cached_input_tokens": "300", "llm_output_tokens": "200",
        "llm_reasoning_tokens": "200", "llm_audio_out": "100"}  # no text input left, no images
    assert sum(int(n) for n in _counts(split).values()) == usage.total_tokens
    assert usage.uncached_input_split() == (0, 700, 0)
    stripe_sink = StripeMeterSink("s", "http://x", "sk", event_names={"reasoning": "reasoning_tokens"})
    stripe = stripe_sink.prepare(event)
    assert isinstance(stripe, list)
    assert {r["event_name"]: r["payload"]["value"] for r in stripe} == {
        "llm_input_tokens": "700", "llm_cached_input_tokens": "300", "llm_output_tokens": "300",
        "reasoning_tokens": "200"}
    with pytest.raises(ValueError, match="unknown usage bucket"):
        LagoSink("l", "http://x", None, metric_codes={"thinking": "x"})


def test_openmeter_takes_the_opt_in_token_classes_from_the_config(tmp_path: Path) -> None:
    """For OpenMeter, ``metric_codes`` names ``data`` fields: by default every bucket as
    ``<bucket>_billable`` (zeros included); a token class given a field leaves its parent's."""
    usage = Usage(input_tokens=1000, output_tokens=500, reasoning_tokens=200)
    event = make_event(1, key="K", usage=usage, customer="sub_1")
    plain = OpenMeterSink("o", "http://x", None).prepare(event)
    assert isinstance(plain, list)
    billable = {k: v for k, v in plain[0]["data"].items() if k.endswith("_billable")}
    assert billable == {"input_billable": 1000, "cached_input_billable": 0, "cache_write_billable": 0,
                        "cache_write_1h_billable": 0, "output_billable": 500, "web_search_billable": 0,
                        "requests_billable": 1}
    path = tmp_path / "jevons.toml"
    path.write_text('[sinks.o]\ntype = "openmeter"\nurl = "http://x"\n'
                    'metric_codes = { reasoning = "reasoning_billable" }\n')
    (sink,) = build_sinks(load_settings(path, environ={})).values()
    split = sink.prepare(event)
    assert isinstance(split, list)
    data = split[0]["data"]
    assert (data["output_billable"], data["reasoning_billable"], data["reasoning_tokens"]) == (300, 200, 200)
    with pytest.raises(ValueError, match="overwrite the event's own data"):
        OpenMeterSink("o", "http://x", None, billable_fields={"reasoning": "reasoning_tokens"})
    # a Lago table's codes copied here would rename input_billable: meters on it would count nothing
    path.write_text('[sinks.o]\ntype = "openmeter"\nurl = "http://x"\n'
                    'metric_codes = { input = "llm_input_tokens" }\n')
    with pytest.raises(ConfigError, match=r"sinks.o: .*not rename \['input'\]"):
        build_sinks(load_settings(path, environ={}))


@pytest.mark.parametrize("make", [
    lambda codes: LagoSink("l", "http://x", None, metric_codes=codes),
    lambda codes: StripeMeterSink("s", "http://x", "sk", event_names=codes),
])
def test_two_buckets_under_one_code_are_refused(make: object) -> None:
    """Their records would share ``<key>:<code>``: the billing system would keep one and drop
    the other's tokens without an error."""
    with pytest.raises(ValueError, match="both use the code 'llm_input_tokens'"):
        make({"cached_input": "llm_input_tokens"})  # type: ignore[operator]


@pytest.mark.parametrize("customer", ["", "   "])
def test_a_blank_customer_is_unattributed_and_billed_to_no_one(customer: str) -> None:
    meter = Meter(ledger="memory")
    event = meter.record(model="gpt-4o", usage=USAGE, provider="openai", customer=customer)
    assert event.customer is None and not event.attributed
    assert meter.stats()["unattributed"] == 1
    stored_blank = make_event(2, customer=customer)  # e.g. an event stored before this rule
    for sink in (LagoSink("l", "http://x", None), StripeMeterSink("s", "http://x", "sk"),
                 OpenMeterSink("o", "http://x", None)):
        held = sink.prepare(stored_blank)
        assert isinstance(held, Hold) and held.reason == "unattributed"
    meter.close()


def test_a_refused_stripe_session_stops_the_drain_and_dead_letters_nothing(ledger: SQLLedger) -> None:
    ledger.append_many([make_event(i, customer="cus_1") for i in range(6)])
    with FakeBilling() as fake:
        fake.state.session_status = 400
        report = Outbox(ledger, {"stripe": StripeMeterSink("stripe", fake.url, STRIPE_KEY)},
                        retry=FAST).drain("stripe")
    assert (report.delivered, report.dead_lettered) == (0, 0)
    assert report.stopped and "session refused" in report.stopped
    assert ledger.parked_counts("stripe") == {} and ledger.sink_state("stripe").position == 0


def test_a_webhook_url_is_posted_to_exactly_as_configured(ledger: SQLLedger) -> None:
    ledger.append(make_event(1))
    with FakeBilling() as fake:
        sink = WebhookSink("hook", f"{fake.url}/billing/jevons/", WEBHOOK_SECRET)
        assert Outbox(ledger, {"hook": sink}).drain("hook").delivered == 1
        assert fake.state.paths[-1] == "/billing/jevons/"


def test_a_naive_event_time_is_written_as_utc() -> None:
    from datetime import datetime

    event = make_event(1, ts=datetime(2026, 10, 2, 1, 0))
    assert event.to_dict()["timestamp"] == "2026-10-02T01:00:00+00:00"


@pytest.mark.parametrize(("toml", "where"), [
    ('[sinks.lago]\ntype = "lago"\nurl = "http://x"\napi_key = "lago-secret"\n', "sinks.lago.api_key"),
    ('[ledger]\nbackend = "postgres"\ndsn = "postgresql://app:hunter2@db/billing"\n',
     "ledger.dsn holds a password"),
    ('[sinks.lago]\ntype = "lago"\nurl = "http://x"\napi_kye_env = "K"\n', "api_kye_env"),
])
def test_a_secret_or_an_unknown_key_in_the_config_file_is_an_error(
    tmp_path: Path, toml: str, where: str,
) -> None:
    path = tmp_path / "jevons.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=where) as raised:
        build_sinks(load_settings(path, environ={}))
    assert "hunter2" not in str(raised.value) and "lago-secret" not in str(raised.value)


def test_a_dsn_with_a_password_from_the_environment_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "jevons.toml"
    path.write_text('[ledger]\nbackend = "postgres"\ndsn_env = "APP_DSN"\n')
    dsn = "postgresql://app:hunter2@db/billing"
    assert load_settings(path, environ={"APP_DSN": dsn}).ledger.dsn_env == "APP_DSN"
    assert load_settings(path, environ={"JEVONS_LEDGER__DSN": dsn}).ledger.dsn == dsn


def test_a_sink_shows_the_same_kind_built_or_read_from_the_config(
    tmp_path: Path, ledger: SQLLedger, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Outbox.status`` (built sinks) and ``jevons outbox status`` (config only) name a sink's
    kind alike: its config ``type``."""
    from jevons.sinks import sink_kinds

    path = tmp_path / "jevons.toml"
    path.write_text('[sinks.s]\ntype = "stripe"\nurl = "http://x"\napi_key_env = "K"\n'
                    '[sinks.o]\ntype = "openmeter"\nurl = "http://x"\n')
    monkeypatch.setenv("K", "sk")
    settings = load_settings(path)
    built = {s.sink: s.kind for s in Outbox(ledger, build_sinks(settings)).status()}
    assert built == sink_kinds(settings) == {"s": "stripe", "o": "openmeter"}
