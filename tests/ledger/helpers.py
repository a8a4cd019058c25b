"""Event factories and ledger fixtures shared by the ledger and sink tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from jevons.config import Settings, load_settings
from jevons.events import Event
from jevons.ledger.database import SQLLedger, postgres_ledger, sqlite_ledger
from jevons.prices.cost import Cost, CostLine, unpriced_cost
from jevons.usage import Usage

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def make_event(
    i: int = 0,
    *,
    customer: str | None = "cust_1",
    model: str = "gpt-4o",
    priced: bool = True,
    ts: datetime | None = None,
    run_id: str | None = None,
    key: str | None = None,
    status: str = "ok",
    usage: Usage | None = None,
) -> Event:
    usage = usage or Usage(input_tokens=1000 + i, output_tokens=200, cache_read_tokens=400)
    if priced:
        inp = Decimal("0.0000025") * (usage.input_tokens - usage.cache_read_tokens)
        cached = Decimal("0.00000125") * usage.cache_read_tokens
        out = Decimal("0.00001") * usage.output_tokens
        cost = Cost(
            model, model, "openai", "priced", inp + cached + out,
            (
                CostLine("input", usage.input_tokens - usage.cache_read_tokens, Decimal("0.0000025"), inp),
                CostLine("cache_read", usage.cache_read_tokens, Decimal("0.00000125"), cached),
                CostLine("output", usage.output_tokens, Decimal("0.00001"), out),
            ),
            price_version=f"openai/{model}@2026-01-01", source="bundled", as_of=T0,
        )
    else:
        cost = unpriced_cost(model, provider="openai", note="no price for this model")
    return Event(
        id=uuid.uuid4().hex,
        idempotency_key=key or f"k-{i}-{uuid.uuid4().hex[:8]}",
        timestamp=ts or (T0 + timedelta(seconds=i)),
        provider="openai",
        model_requested=model,
        usage=usage,
        cost=cost,
        customer=customer,
        run_id=run_id,
        status=status,  # type: ignore[arg-type]
        tags={"team": "a"},
    )


def unique_schema() -> str:
    return f"jt_{uuid.uuid4().hex[:12]}"


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def settings_for(backend: str, *, home: str, dsn: str | None = None, schema: str | None = None,
                 **ledger: object) -> Settings:
    env = {"JEVONS_HOME": home, "JEVONS_LEDGER__BACKEND": backend,
           "JEVONS_LEDGER__JOURNAL_DIR": f"{home}/ledger/journal"}
    if backend == "sqlite":
        env["JEVONS_LEDGER__PATH"] = f"{home}/ledger/ledger.db"
    if dsn:
        env["JEVONS_LEDGER__DSN"] = dsn
    if schema:
        env["JEVONS_LEDGER__PG_SCHEMA"] = schema
    for k, v in ledger.items():
        env[f"JEVONS_LEDGER__{k.upper()}"] = str(v)
    return load_settings(environ=env)


def open_test_ledger(
    backend: str, tmp: str, dsn: str | None, schema: str | None = None
) -> Iterator[SQLLedger]:
    """A fresh ledger: a SQLite file, or tables with a unique prefix in the run's PostgreSQL
    schema (dropped with the schema at the end of the session)."""
    if backend == "sqlite":
        ledger = sqlite_ledger(f"{tmp}/ledger.db")
    else:
        assert dsn is not None and schema is not None
        ledger = postgres_ledger(dsn, schema=schema, prefix=f"t{uuid.uuid4().hex[:10]}_")
    try:
        yield ledger
    finally:
        ledger.close()


def acks_until_killed(proc: Any, at_least: int, stderr_path: Path, *, timeout_s: float = 60) -> list[str]:
    """Read the ``ok <key>`` lines a recorder subprocess prints once a call returned, until
    ``at_least`` are in; then SIGKILL it and read what it printed before it died (through the
    same buffered reader: nothing read ahead is lost). The keys of every acknowledged call."""
    import os
    import signal
    import time

    import pytest

    acked: list[str] = []
    deadline = time.monotonic() + timeout_s
    while len(acked) < at_least and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"recorder died: {stderr_path.read_text()[-2000:]}")
        acked.append(line.split()[1])
    os.kill(proc.pid, signal.SIGKILL)  # mid-load, no clean shutdown
    proc.wait(timeout=30)
    acked += [line.split()[1] for line in proc.stdout.read().splitlines()
              if line.startswith("ok ") and len(line.split()) == 2]
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= at_least
    return acked


class Outage:
    """Makes ``ledger.insert_rows`` fail while ``down`` is true (a database that is down)."""

    def __init__(self, ledger: SQLLedger, monkeypatch: Any, *, down: bool = True) -> None:
        self.down = down
        real = ledger.insert_rows

        def maybe(rows: Any) -> int:
            if self.down:
                raise RuntimeError("database is down")
            return real(rows)

        monkeypatch.setattr(ledger, "insert_rows", maybe)
