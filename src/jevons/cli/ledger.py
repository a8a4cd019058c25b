"""CLI commands of the ledger layer: ``jevons events``, ``jevons reprice``, ``jevons outbox ...``.

Every command that reads the ledger opens it through ``jevons.ledger.open_recovered_ledger`` (or
``open_outbox``, which does the same): the append logs of processes killed on this host are
stored first, so what they acknowledged is shown and delivered without waiting for a ``Meter``
to start. ``outbox status`` and ``outbox dead-letters`` read the ledger only: they take sink
names and types from the config and need none of the sinks' secrets; ``drain`` and ``replay``
build the sinks and fail, naming the variable, when a secret is not set.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    from jevons.config import Settings
    from jevons.ledger.database import SQLLedger
    from jevons.sinks.outbox import Outbox

__all__ = ["parse_time", "register"]

_err = Console(stderr=True)
_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _fail(message: str) -> NoReturn:
    _err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(1)


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """``2026-11-01``, ``2026-11-01T12:00:00Z`` (naive = UTC), or ``7d`` / ``24h`` / ``30m`` ago."""
    text = text.strip()
    m = _RELATIVE.match(text)
    if m:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a time (try 2026-11-01, an ISO time, or 7d)") \
            from None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


@contextmanager
def _errors() -> Iterator[None]:
    """Known failures become one line and exit code 1, never a traceback."""
    from jevons.config import ConfigError
    from jevons.ledger.database import LedgerError

    try:
        yield
    except (ConfigError, LedgerError, ValueError) as exc:
        _fail(str(exc))
    except KeyError as exc:
        _fail(str(exc.args[0]) if exc.args else "not found")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=_err, transient=True,
    )


@contextmanager
def _outbox_session(sink: str | None) -> Iterator[Outbox]:
    """The configured outbox, as ``open_outbox`` builds it for every drainer (Lago price mode
    bills the policy's charge when ``[billing] policy_file`` is set, else cost x markup)."""
    from jevons.config import load_settings
    from jevons.sinks import open_outbox

    box = open_outbox(load_settings(), only=sink)
    try:
        yield box
    finally:
        box.close()
        box.ledger.close()


@contextmanager
def _ledger_session(settings: Settings | None = None) -> Iterator[SQLLedger]:
    """The ledger database, crashed processes' append logs recovered first."""
    from jevons.config import load_settings
    from jevons.ledger import open_recovered_ledger

    ledger = open_recovered_ledger(settings or load_settings())
    try:
        yield ledger
    finally:
        ledger.close()


def _utc(us: int) -> str:
    from jevons.ledger.codec import from_micros

    return from_micros(us).strftime("%Y-%m-%d %H:%M:%S")


def _echo_report(line: str, stopped: str | None) -> bool:
    """Print one sink's outcome; True when the sink stopped early (the command then fails)."""
    typer.echo(f"{line}; stopped: {stopped}" if stopped else line)
    return bool(stopped)


def register(app: typer.Typer) -> None:
    """Add this layer's commands to the top-level app."""
    outbox = typer.Typer(help="Deliveries of ledger events to billing sinks.", no_args_is_help=True)
    app.add_typer(outbox, name="outbox")

    @outbox.command("status")
    def outbox_status(
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Per sink: pending events, oldest pending age, dead-lettered, held, last error."""
        from jevons.config import load_settings
        from jevons.sinks import sink_kinds
        from jevons.sinks.outbox import sink_statuses

        with _errors():
            settings = load_settings()
            kinds = sink_kinds(settings)
            with _ledger_session(settings) as ledger:
                rows = sink_statuses(ledger, kinds)
        if as_json:
            typer.echo(json.dumps([_slots(r) for r in rows], indent=2))
            return
        if not rows:
            typer.echo("no sinks configured (add a [sinks.<name>] table to jevons.toml)")
            return
        table = Table(title="jevons outbox")
        for col in ("sink", "pending", "oldest", "delivered", "dead-lettered", "wait price",
                    "no customer", "last error"):
            table.add_column(col, justify="left" if col in ("sink", "last error") else "right",
                             no_wrap=col == "sink")
        for r in rows:
            err = "-" if not r.last_error else f"{r.last_error[:80]} ({_age(r.last_error_age_s)} ago)"
            table.add_row(f"{r.sink} ({r.kind})", str(r.pending), _age(r.oldest_pending_age_s),
                          str(r.delivered), str(r.dead_lettered), str(r.waiting_for_price),
                          str(r.unattributed), err)
        Console().print(table)

    @outbox.command("dead-letters")
    def outbox_dead_letters(
        sink: Annotated[str | None, typer.Option("--sink", help="Only this sink.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Dead-lettered events, per sink, with the reason the sink refused each."""
        from jevons.config import load_settings
        from jevons.ledger.codec import from_micros
        from jevons.sinks import sink_kinds
        from jevons.sinks.outbox import DEAD_LETTER

        rows: list[dict[str, Any]] = []
        with _errors():
            settings = load_settings()
            kinds = sink_kinds(settings, only=sink)
            with _ledger_session(settings) as ledger:
                for name in kinds:
                    parked = ledger.parked(name, DEAD_LETTER)
                    events = dict(ledger.events_by_seq([p.seq for p in parked]))
                    for p in parked:
                        event = events.get(p.seq)
                        rows.append({
                            "sink": name, "seq": p.seq,
                            "idempotency_key": event.idempotency_key if event else None,
                            "customer": event.customer if event else None,
                            "parked_at": from_micros(p.parked_at_us).isoformat(),
                            "parked_at_us": p.parked_at_us,
                            "error": p.error,
                        })
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            typer.echo("no dead-lettered events")
            return
        table = Table(title=f"jevons dead-lettered events ({len(rows)})")
        for col in ("sink", "seq", "idempotency key", "customer", "parked at (UTC)", "error"):
            table.add_column(col, justify="right" if col == "seq" else "left",
                             no_wrap=col in ("sink", "seq", "parked at (UTC)"))
        for r in rows:
            table.add_row(r["sink"], str(r["seq"]), r["idempotency_key"] or "-", r["customer"] or "-",
                          _utc(r["parked_at_us"]), r["error"] or "-")
        Console().print(table)

    @outbox.command("drain")
    def outbox_drain(
        sink: Annotated[str | None, typer.Option("--sink", help="Only this sink.")] = None,
        max_seconds: Annotated[float | None, typer.Option(help="Stop after this long.")] = None,
    ) -> None:
        """Deliver pending events now (progress bar on long drains)."""
        with _errors(), _outbox_session(sink) as box:
            if not box.sinks:
                typer.echo("no sinks configured")
                return
            failed = False
            with _progress() as progress:
                for name in box.sinks:
                    task = progress.add_task(f"draining {name}", total=None)

                    def step(done: int, total: int, task: Any = task) -> None:
                        progress.update(task, completed=done, total=total)

                    report = box.drain(name, max_seconds=max_seconds, progress=step)
                    progress.remove_task(task)
                    failed |= _echo_report(
                        f"{name}: delivered {report.delivered}, dead-lettered {report.dead_lettered}, "
                        f"held {report.held}, released {report.released}, retries {report.retries} "
                        f"in {report.seconds:.1f}s", report.stopped)
        if failed:
            raise typer.Exit(1)

    @outbox.command("replay")
    def outbox_replay(
        dead_letter: Annotated[
            bool, typer.Option("--dead-letter", help="Replay dead-lettered events.")
        ] = False,
        sink: Annotated[str | None, typer.Option("--sink", help="Only this sink.")] = None,
    ) -> None:
        """Send dead-lettered events again (after fixing what the sink refused)."""
        if not dead_letter:
            _fail("say what to replay: --dead-letter")
        with _errors(), _outbox_session(sink) as box:
            failed = False
            for name in box.sinks:
                report = box.replay_dead_letters(name)
                failed |= _echo_report(
                    f"{name}: replayed {report.delivered}, still dead-lettered {report.dead_lettered}",
                    report.stopped)
        if failed:
            raise typer.Exit(1)

    @app.command("events")
    def events(
        customer: Annotated[str | None, typer.Option(help="Only this customer.")] = None,
        since: Annotated[str | None, typer.Option(help="From (ISO time or 7d/24h ago).")] = None,
        until: Annotated[str | None, typer.Option(help="Before (ISO time or 7d/24h ago).")] = None,
        run: Annotated[str | None, typer.Option("--run", help="Only this run id.")] = None,
        model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
        status: Annotated[
            str | None, typer.Option(help="ok/error/aborted or priced/estimated/unpriced.")
        ] = None,
        limit: Annotated[int, typer.Option(help="At most this many (0 = all).")] = 100,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
    ) -> None:
        """Events in the ledger, oldest first."""
        from jevons.ledger import EventQuery

        with _errors():
            q = EventQuery(
                customer=customer,
                since=parse_time(since) if since else None,
                until=parse_time(until) if until else None,
                run_id=run, model=model, status=status, limit=limit or None,
            )
            with _ledger_session() as ledger:
                found = ledger.query(q)
        if as_json:
            out = sys.stdout
            for e in found:
                out.write(json.dumps(e.to_dict(), separators=(",", ":")) + "\n")
            return
        table = Table(title=f"jevons events ({len(found)})")
        for col in ("time (UTC)", "customer", "model", "in", "out", "cost USD", "cost", "status"):
            table.add_column(col, justify="right" if col in ("in", "out", "cost USD") else "left")
        for e in found:
            total = e.cost.total_usd
            table.add_row(
                e.timestamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"), e.customer or "-",
                e.model or e.model_requested, str(e.usage.input_tokens), str(e.usage.output_tokens),
                "-" if total is None else f"{total:f}", e.cost.status, e.status,
            )
        Console().print(table)

    @app.command("reprice")
    def reprice_cmd(
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Report only; change nothing.")] = False,
    ) -> None:
        """Price unpriced events whose price has appeared (old costs kept for audit)."""
        from jevons import default_book
        from jevons.ledger.reprice import reprice

        with _errors(), _ledger_session() as ledger:
            book = default_book()
            report = reprice(ledger, book, dry_run=dry_run)
        verb = "would reprice" if dry_run else "repriced"
        typer.echo(f"{verb} {report.repriced} of {report.examined} unpriced events; "
                   f"{report.still_unpriced} still without a price")
        for name, n in sorted(report.by_model.items()):
            typer.echo(f"  {name}: {n}")


def _slots(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in getattr(obj, "__slots__", ())}

