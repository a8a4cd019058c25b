"""Crash tests: SIGKILL the recording process while the sink is down, and SIGKILL the sink in
the middle of a batch. Afterwards the sink holds exactly the acknowledged events, once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jevons.config import load_settings
from jevons.ledger import open_store
from jevons.sinks import open_outbox
from jevons.sinks.lago import LagoSink
from jevons.sinks.outbox import Outbox, RetryPolicy
from ledger.helpers import acks_until_killed, make_event

from .fakes import FakeBilling, load_state

REPO = Path(__file__).resolve().parents[2]

RECORDER = textwrap.dedent(
    """
    import sys, threading
    from jevons import Meter
    from jevons.sinks import open_outbox
    from jevons.sinks.outbox import OutboxWorker

    meter = Meter()  # default store: jevons.ledger.open_store(settings from the environment)
    # the outbox runs too, against a sink that is down: its backlog stays on disk
    worker = OutboxWorker(open_outbox(), interval_s=0.05).start()
    out_lock = threading.Lock()

    def work(t):
        i = 0
        while True:
            key = f"t{t}-{i}"
            meter.record(model="gpt-4o", provider="openai", customer=f"cust_{t}",
                         usage={"input_tokens": 100 + i % 7, "output_tokens": 20},
                         idempotency_key=key)
            with out_lock:
                sys.stdout.write(f"ok {key}\\n")
                sys.stdout.flush()
            i += 1

    for t in range(4):
        threading.Thread(target=work, args=(t,), daemon=True).start()
    threading.Event().wait()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path, port: int, backend: str, dsn: str | None, schema: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEVONS_")}
    env.update({
        "JEVONS_HOME": str(home),
        "JEVONS_LEDGER__BACKEND": backend,
        "JEVONS_SINKS__LAGO__TYPE": "lago",
        "JEVONS_SINKS__LAGO__URL": f"http://127.0.0.1:{port}",
        "JEVONS_SINKS__LAGO__MAX_ATTEMPTS": "2",
        "JEVONS_SINKS__LAGO__BACKOFF_BASE_SECONDS": "0.01",
        "JEVONS_SINKS__LAGO__TIMEOUT_SECONDS": "2",
        "PYTHONPATH": str(REPO / "src"),
    })
    if dsn and schema:
        env["JEVONS_LEDGER__DSN"] = dsn
        env["JEVONS_LEDGER__PG_SCHEMA"] = schema
        env["JEVONS_LEDGER__TABLE_PREFIX"] = f"crash{os.getpid()}_"
    return env


@pytest.mark.slow
def test_sigkill_while_recording_with_the_sink_down(
    backend: str, dsn_for: str | None, tmp_path: Path, request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema = request.getfixturevalue("pg_run_schema") if backend == "postgres" else None
    port = _free_port()  # nothing listens there yet: the sink is down
    env = _env(tmp_path / "home", port, backend, dsn_for, schema)
    err_path = tmp_path / "recorder.stderr"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-c", RECORDER], env=env, stdout=subprocess.PIPE,
                                stderr=err_file, text=True)
    acked = acks_until_killed(proc, 1500, err_path)

    # restart: the settings of the dead process; start-up recovers its append log
    for k, v in env.items():
        if k.startswith("JEVONS_"):
            monkeypatch.setenv(k, v)
    settings = load_settings()
    store = open_store(settings)
    store.close()
    with FakeBilling(port) as fake:  # the sink is back
        box = open_outbox(settings)
        box.retries["lago"] = RetryPolicy(base_s=0.01, max_attempts=5)
        report = box.drain("lago")
        box.close()
        stored = box.ledger.query()
        box.ledger.close()
    assert report.stopped is None, report.stopped
    stored_keys = [e.idempotency_key for e in stored]
    assert len(stored_keys) == len(set(stored_keys)), "an event stored twice"
    delivered = {tid.rsplit(":", 1)[0] for tid in fake.keys}
    # every acknowledged event reached the sink; besides them at most the 4 in flight at the kill
    assert set(acked) <= delivered
    assert len(delivered - set(acked)) <= 4
    assert delivered == set(stored_keys)
    # two Lago records (input, output) per event, each once
    assert len(fake.keys) == 2 * len(delivered)


@pytest.mark.slow
def test_sink_killed_mid_batch(ledger: object, tmp_path: Path) -> None:
    from jevons.ledger.database import SQLLedger

    assert isinstance(ledger, SQLLedger)
    events = [make_event(i, customer=f"sub_{i % 5}") for i in range(1500)]
    ledger.append_many(events)
    port = _free_port()
    state = tmp_path / "lago-state.jsonl"
    cmd = [sys.executable, str(Path(__file__).with_name("fakes.py")), str(port), str(state)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}

    def start(*extra: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([*cmd, *extra], env=env, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return p

    server = start("--die-after-records", "650")  # SIGKILLs itself inside the 7th batch
    box = Outbox(ledger, {"lago": LagoSink("lago", f"http://127.0.0.1:{port}", None, mode="price",
                                           timeout=2)},
                 retry=RetryPolicy(base_s=0.01, max_s=0.05, max_attempts=3))
    first = box.drain("lago")
    assert server.wait(timeout=30) == -signal.SIGKILL
    assert first.stopped and first.delivered < 1500
    assert len(load_state(state)) == 650  # part of the batch was kept, the rest was not

    server = start()  # restarted with what it had persisted
    try:
        second = box.drain("lago")
    finally:
        server.kill()
        server.wait()
    assert second.stopped is None
    lines = [line for line in state.read_text().splitlines() if line.strip()]
    held = load_state(state)
    assert len(lines) == len(held) == 1500, "a record was stored twice"
    assert set(held) == {e.idempotency_key for e in events}
    box.close()


CRASHER = textwrap.dedent(
    """
    import os, sys
    from jevons import Meter

    meter = Meter()
    first, n = int(sys.argv[1]), int(sys.argv[2])
    for i in range(first, first + n):
        meter.record(model="gpt-4o", provider="openai", customer="acme",
                     usage={"input_tokens": 10 + i}, idempotency_key=f"crash-{i}")
    sys.stdout.write("recorded\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), 9)  # every record() returned: all of them are acknowledged
    """
)


def test_cli_recovers_a_killed_recorders_log_before_draining_or_listing(
    backend: str, dsn_for: str | None, tmp_path: Path, request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No ``Meter`` starts after the kill: ``jevons outbox drain`` and ``jevons events`` alone
    must store the dead process's append log first (before, they read the database only)."""
    import json
    import uuid

    from typer.testing import CliRunner

    from jevons.cli.app import app
    from jevons.ledger import open_ledger

    out = tmp_path / "archive.jsonl"
    config = tmp_path / "jevons.toml"
    config.write_text(f'[sinks.archive]\ntype = "jsonl"\npath = "{out}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEVONS_")}
    env.update({
        "JEVONS_HOME": str(tmp_path / "home"),
        "JEVONS_CONFIG": str(config),
        "JEVONS_LEDGER__BACKEND": backend,
        # the recorder's drain thread does not commit before the kill: the events are in its log only
        "JEVONS_LEDGER__FLUSH_INTERVAL_MS": "600000",
        "PYTHONPATH": str(REPO / "src"),
    })
    if backend == "postgres":
        assert dsn_for is not None
        env["JEVONS_LEDGER__DSN"] = dsn_for
        env["JEVONS_LEDGER__PG_SCHEMA"] = request.getfixturevalue("pg_run_schema")
        env["JEVONS_LEDGER__TABLE_PREFIX"] = f"cc{uuid.uuid4().hex[:8]}_"
    for k, v in env.items():
        if k.startswith("JEVONS_"):
            monkeypatch.setenv(k, v)
    journal = tmp_path / "home" / "ledger" / "journal"

    def crash(first: int, n: int) -> None:
        done = subprocess.run([sys.executable, "-c", CRASHER, str(first), str(n)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == -signal.SIGKILL and "recorded" in done.stdout, done.stderr[-2000:]
        assert list(journal.glob("*/*.jnl")), "the killed process left no log"
        ledger = open_ledger(load_settings())
        try:
            assert ledger.count() == first  # its events are in its log, not in the database
        finally:
            ledger.close()

    runner = CliRunner()
    crash(0, 40)
    drained = runner.invoke(app, ["outbox", "drain"])
    assert drained.exit_code == 0, drained.output
    assert "archive: delivered 40" in drained.stdout
    assert sorted(json.loads(line)["idempotency_key"] for line in out.read_text().splitlines()) == \
        sorted(f"crash-{i}" for i in range(40))
    assert not list(journal.glob("*/*.jnl"))

    crash(40, 25)
    listed = runner.invoke(app, ["events", "--json", "--limit", "0"])
    assert listed.exit_code == 0, listed.output
    keys = [json.loads(line)["idempotency_key"] for line in listed.stdout.splitlines()]
    assert sorted(keys) == sorted(f"crash-{i}" for i in range(65))
