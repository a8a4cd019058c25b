"""Stripe meter events, OpenMeter CloudEvents, the JSONL file and the signed webhook; sinks
built from config with secrets only from the environment."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from jevons.config import ConfigError, load_settings
from jevons.events import Event
from jevons.ledger.database import SQLLedger
from jevons.sinks import build_sinks, open_outbox
from jevons.sinks.files import JsonlSink, WebhookSink, sign, verify
from jevons.sinks.openmeter import OpenMeterSink
from jevons.sinks.outbox import Outbox, RetryPolicy
from jevons.sinks.stripe import StripeMeterSink
from ledger.helpers import make_event

from .fakes import STRIPE_KEY, WEBHOOK_SECRET, FakeBilling

FAST = RetryPolicy(base_s=0.001, max_s=0.01, max_attempts=4)


def test_stripe_meter_event_stream(ledger: SQLLedger) -> None:
    events = [make_event(i, customer="cus_123") for i in range(120)]
    ledger.append_many(events)
    with FakeBilling() as fake:
        sink = StripeMeterSink("stripe", fake.url, STRIPE_KEY)
        report = Outbox(ledger, {"stripe": sink}, retry=FAST).drain("stripe")
        sink.close()
    assert report.delivered == 120
    first = fake.state.bodies[0]["events"][0]
    assert set(first) == {"event_name", "identifier", "timestamp", "payload"}
    assert first["timestamp"].endswith("Z")
    payloads = {ev["identifier"]: ev["payload"] for b in fake.state.bodies for ev in b["events"]}
    # event 0: 1000 input of which 400 cache reads -> disjoint buckets 600 / 400 / 200, as strings
    key0 = events[0].idempotency_key
    assert {name: payloads[f"{key0}:{name}"] for name in
            ("llm_input_tokens", "llm_cached_input_tokens", "llm_output_tokens")} == {
        "llm_input_tokens": {"stripe_customer_id": "cus_123", "value": "600"},
        "llm_cached_input_tokens": {"stripe_customer_id": "cus_123", "value": "400"},
        "llm_output_tokens": {"stripe_customer_id": "cus_123", "value": "200"},
    }
    assert all(len(b["events"]) <= 100 for b in fake.state.bodies)
    expected = {f"{e.idempotency_key}:{name}" for e in events
                for name in ("llm_input_tokens", "llm_cached_input_tokens", "llm_output_tokens")}
    assert fake.keys == expected


def test_stripe_bad_key_stops_the_drain_without_retrying(ledger: SQLLedger) -> None:
    ledger.append(make_event(1))
    with FakeBilling() as fake:
        sink = StripeMeterSink("stripe", fake.url, "sk_wrong")
        report = Outbox(ledger, {"stripe": sink}, retry=FAST).drain("stripe")
    assert report.stopped and "401" in report.stopped and report.retries == 0
    assert ledger.sink_state("stripe").position == 0


def test_openmeter_cloudevents(ledger: SQLLedger) -> None:
    events = [make_event(i, customer="acme") for i in range(30)]
    ledger.append_many([*events, make_event(99, customer=None)])
    with FakeBilling() as fake:
        box = Outbox(ledger, {"om": OpenMeterSink("om", fake.url, None, source="svc-a")}, retry=FAST)
        report = box.drain("om")
        assert box.status()[0].unattributed == 1
    assert report.delivered == 30 and report.held == 1
    ce = fake.state.bodies[0][0]
    assert ce["specversion"] == "1.0" and ce["source"] == "svc-a" and ce["subject"] == "acme"
    assert ce["data"]["input_tokens"] == 1000
    # 600 x 2.5/M + 400 cached x 1.25/M + 200 x 10/M, as plain digits without trailing zeros
    assert ce["data"]["cost_usd"] == "0.004"
    assert fake.keys == {f"svc-a|{e.idempotency_key}" for e in events}


def test_jsonl_sink_appends_canonical_events(ledger: SQLLedger, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import jevons.sinks.files as files

    synced: list[int] = []
    real_fsync = files.os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    events = [make_event(i) for i in range(25)]
    ledger.append_many(events)
    path = tmp_path / "out" / "events.jsonl"
    box = Outbox(ledger, {"file": JsonlSink("file", path, batch_size=10)})
    assert box.drain("file").delivered == 25
    assert len(synced) == 3  # once per batch of 10, 10, 5: durable before the cursor moves
    ledger.append(make_event(100))
    assert box.drain("file").delivered == 1
    lines = path.read_text().splitlines()
    assert len(lines) == 26
    back = [Event.from_dict(json.loads(line)) for line in lines]
    assert [e.id for e in back[:25]] == [e.id for e in events]
    assert back[0].cost.total_usd == events[0].cost.total_usd


def test_webhook_is_signed_and_verified(ledger: SQLLedger) -> None:
    ledger.append_many([make_event(i) for i in range(7)])
    with FakeBilling() as fake:
        good = Outbox(ledger, {"hook": WebhookSink("hook", f"{fake.url}/hook", WEBHOOK_SECRET)})
        assert good.drain("hook").delivered == 7
        assert fake.state.signatures_ok == 1 and len(fake.keys) == 7
        ledger.append(make_event(50))
        bad = Outbox(ledger, {"hook": WebhookSink("hook", f"{fake.url}/hook", "wrong")}, retry=FAST)
        assert bad.drain("hook").stopped
        assert fake.state.signatures_bad == 1


def test_signature_helpers() -> None:
    body = b'{"events":[]}'
    header = sign(b"s", body, 1000)
    assert verify(b"s", body, header, now=1000)
    assert not verify(b"s", body + b" ", header, now=1000)
    assert not verify(b"s", body, header, now=5000)  # stale
    assert not verify(b"other", body, header, now=1000)


def test_sinks_from_config_take_secrets_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tmp_path / "jevons.toml"
    cfg.write_text(
        '[sinks.lago]\ntype = "lago"\nurl = "http://127.0.0.1:9"\napi_key_env = "MY_LAGO_KEY"\n'
        'mode = "price"\nmetric_codes = { input = "in_tok" }\n'
        '[sinks.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:9/h"\nsecret_env = "MY_HOOK_SECRET"\n'
        '[sinks.off]\ntype = "jsonl"\nenabled = false\n'
    )
    with pytest.raises(ConfigError, match="MY_LAGO_KEY is not set"):
        build_sinks(load_settings(cfg))
    monkeypatch.setenv("MY_LAGO_KEY", "lago-secret-value")
    monkeypatch.setenv("MY_HOOK_SECRET", "hook-secret-value")
    sinks = build_sinks(load_settings(cfg))
    assert set(sinks) == {"lago", "hook"}
    assert sinks["lago"].metric_codes["input"] == "in_tok"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="no sink named"):
        build_sinks(load_settings(cfg), only="nope")
    # a failing drain records its error, never the secret
    box = open_outbox(load_settings(cfg), only="lago")
    assert box.retries["lago"].max_attempts == 8  # from the config (default)
    box.retries["lago"] = RetryPolicy(base_s=0, max_attempts=1)
    box.ledger.append(make_event(1))
    with caplog.at_level(logging.DEBUG):  # every logger, httpx's included
        assert box.drain("lago").stopped
    assert caplog.records and "lago-secret-value" not in caplog.text  # nor in the logs
    assert "connection error" in (box.ledger.sink_state("lago").last_error or "")
    db = Path(load_settings(cfg).home_dir) / "ledger" / "ledger.db"
    box.close()
    box.ledger.close()
    raw = b"".join(p.read_bytes() for p in db.parent.glob("ledger.db*"))
    assert b"connection error" in raw  # the error is in the ledger...
    assert b"lago-secret-value" not in raw  # ...the secret is not


@pytest.mark.parametrize("ts", [
    datetime(2026, 3, 1, 12, 30),  # naive: UTC, as the ledger reads it
    datetime(2026, 3, 1, 14, 30, tzinfo=timezone(timedelta(hours=2))),
])
def test_stripe_and_openmeter_send_event_times_in_utc(ts: datetime) -> None:
    event = make_event(1, customer="cus_1", ts=ts)
    stripe = StripeMeterSink("stripe", "http://127.0.0.1:1", STRIPE_KEY)
    meter = OpenMeterSink("om", "http://127.0.0.1:1", None)
    try:
        stripe_records, meter_records = stripe.prepare(event), meter.prepare(event)
    finally:
        stripe.close()
        meter.close()
    assert isinstance(stripe_records, list) and isinstance(meter_records, list)
    assert {r["timestamp"] for r in stripe_records} == {"2026-03-01T12:30:00Z"}
    assert meter_records[0]["time"] == "2026-03-01T12:30:00Z"
