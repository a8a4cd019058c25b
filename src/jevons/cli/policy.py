"""CLI commands of the policy layer: ``rate``, ``invoice``, ``rerate``, ``credits ...`` and
``policy check``.

The policy file comes from ``--policy`` (repeatable: effective-dated versions) or
``[billing] policy_file`` in the settings. Bad input gets one clear line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from jevons.events import Event
    from jevons.policy.engine import Invoice, PolicyEngine
    from jevons.policy.loader import PolicySet

PolicyOpt = Annotated[
    list[Path] | None,
    typer.Option("--policy", "-p", help="Policy TOML file (repeat for effective-dated versions)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


class _Fail(Exception):
    pass


def _die(message: str) -> NoReturn:
    raise _Fail(message)


@contextmanager
def _clean_errors() -> Iterator[None]:
    """Expected errors -> one line on stderr, exit code 2."""
    from pydantic import ValidationError

    from jevons.config import ConfigError
    from jevons.policy.engine import RatingError
    from jevons.policy.loader import PolicyError

    try:
        yield
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        typer.echo(f"error: {where}: {msg}" if where else f"error: {msg}", err=True)
        raise typer.Exit(2) from None
    except (_Fail, PolicyError, ConfigError, RatingError, LookupError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _policies(paths: list[Path] | None) -> PolicySet:
    from jevons.config import load_settings
    from jevons.policy.loader import load_policies

    if not paths:
        configured = load_settings().billing.policy_file
        if not configured:
            _die("no policy: pass --policy FILE or set [billing] policy_file")
        paths = [Path(str(configured))]
    return load_policies(paths)


def _parse_when(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        _die(f"{what}: {value!r} is not an ISO date or date-time")
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _money(value: str, what: str) -> Decimal:
    try:
        out = Decimal(value)
    except InvalidOperation:
        _die(f"{what}: {value!r} is not a number")
    if not out.is_finite():
        _die(f"{what}: {value!r} is not a finite number")
    return out


def _read_events(path: Path) -> list[Event]:
    from jevons.events import Event

    out: list[Event] = []
    try:
        handle = sys.stdin if str(path) == "-" else path.open(encoding="utf-8")
    except OSError as exc:
        _die(f"{path}: cannot read events: {exc.strerror}")
    with handle:
        for n, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                out.append(Event.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                _die(f"{path}:{n}: not an event: {exc}")
    return out


def _fmt(amount: Decimal) -> str:
    return f"{amount:,.2f}"


def _show_invoice(inv: Invoice) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Invoice preview: {inv.customer or '(unattributed)'} {inv.period}")
    table.add_column("line")
    table.add_column("gross", justify="right")
    table.add_column("allowance", justify="right")
    table.add_column("discount", justify="right")
    table.add_column("cap absorbed", justify="right")
    table.add_column("amount", justify="right")
    for line in inv.lines:
        d = line.detail
        table.add_row(
            line.description,
            _fmt(d["gross"]) if "gross" in d else "",
            _fmt(-d["included"]) if "included" in d else "",
            _fmt(-d["discount"]) if "discount" in d else "",
            _fmt(-d["absorbed"]) if "absorbed" in d else "",
            f"{line.rounded:,}",
        )
    table.add_section()
    table.add_row("total due", "", "", "", "", f"{inv.total_due:,}")
    console = Console()
    console.print(table)
    pct = "n/a" if inv.margin_pct is None else f"{inv.margin_pct * 100:.1f}%"
    console.print(
        f"cost ${_fmt(inv.cost)}  revenue ${_fmt(inv.revenue)}  margin ${_fmt(inv.margin)} ({pct})"
        f"  absorbed cost ${_fmt(inv.absorbed_cost)}  events {inv.events}"
        + (f"  [yellow]unpriced (rated at fallback): {inv.unpriced_events}[/]" if inv.unpriced_events else "")
    )
    console.print(f"[dim]Lines are rounded to cents ({inv.rounding.replace('_', ' ')}); "
                  "the total is the sum of the rounded lines.[/]")


def _engine(paths: list[Path] | None, *, with_store_grants: bool) -> PolicyEngine:
    from jevons.policy.engine import PolicyEngine

    policies = _policies(paths)
    grants = []
    if with_store_grants:
        from jevons.policy.store import open_policy_store

        store = open_policy_store()
        try:
            grants = store.grants()
        finally:
            store.close()
    return PolicyEngine(policies, extra_grants=grants)


def _ledger_events(engine: PolicyEngine, customer: str | None, period: str) -> list[Event]:
    from jevons import ledger
    from jevons.policy.periods import period_bounds

    open_store = getattr(ledger, "open_store", None)
    if open_store is None:
        _die("no ledger available (jevons.ledger.open_store)")
    store = open_store()
    try:
        # credits carry across periods: read back to the first grant's period (every
        # customer's when re-rating them all), or its credit would be drawn again
        since = (engine.history_start(customer, period) if customer is not None
                 else engine.history_start_all(period))
        until = period_bounds(period)[1]
        return list(store.query(ledger.EventQuery(customer=customer, since=since, until=until)))
    finally:
        store.close()


def register(app: typer.Typer) -> None:
    """Add this layer's commands to the top-level app."""
    policy_app = typer.Typer(help="Billing policies.", no_args_is_help=True)
    credits_app = typer.Typer(help="Prepaid credit wallets.", no_args_is_help=True)
    app.add_typer(policy_app, name="policy")
    app.add_typer(credits_app, name="credits")

    @policy_app.command("check")
    def check(files: Annotated[list[Path], typer.Argument(help="Policy TOML file(s).")]) -> None:
        """Validate policy files; errors name the file, line and field."""
        with _clean_errors():
            from jevons.policy.loader import load_policies

            pset = load_policies(files)
            for pol in pset.versions:
                since = pol.effective_from.date().isoformat() if pol.effective_from else "always"
                typer.echo(f"ok: {pol.name} (effective {since}): {len(pol.classes)} classes, "
                           f"{len(pol.plans)} plans, {len(pol.customers)} customers")

    @app.command("rate")
    def rate(
        events: Annotated[Path, typer.Option("--events", "-e", help="Events JSONL ('-' = stdin).")],
        policy: PolicyOpt = None,
        period: Annotated[str | None, typer.Option(help="Only this period (YYYY-MM).")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """What-if: rate events under a policy and preview every customer's invoices."""
        with _clean_errors():
            from jevons.policy.batch import rate_customer_fast
            from jevons.policy.periods import period_bounds, period_of

            if period is not None:
                period_bounds(period)
            engine = _engine(policy, with_store_grants=False)
            evs = _read_events(events)
            by_customer: dict[str | None, list[Event]] = {}
            for e in evs:
                by_customer.setdefault(e.customer, []).append(e)
            invoices: list[Invoice] = []
            for customer in sorted(by_customer, key=lambda c: c or ""):
                cust_events = by_customer[customer]
                last = period or max(period_of(e.timestamp) for e in cust_events)
                upto = [e for e in cust_events if period_of(e.timestamp) <= last]
                rater = rate_customer_fast(engine, customer, upto, through=last)
                invoices.extend(i for i in rater.invoices if period is None or i.period == period)
            if as_json:
                typer.echo(json.dumps({"invoices": [i.to_dict() for i in invoices]}, indent=2))
                return
            if not invoices:
                typer.echo("no events to rate")
            for inv in invoices:
                _show_invoice(inv)

    @app.command("invoice")
    def invoice(
        customer: Annotated[str, typer.Option(help="Customer id.")],
        period: Annotated[str, typer.Option(help="Billing period YYYY-MM.")],
        policy: PolicyOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Invoice preview of one customer and period, from the ledger."""
        with _clean_errors():
            from jevons.policy.periods import period_bounds

            period_bounds(period)
            engine = _engine(policy, with_store_grants=True)
            evs = _ledger_events(engine, customer, period)
            inv = engine.invoice(customer, period, evs)
            if as_json:
                typer.echo(json.dumps(inv.to_dict(), indent=2))
            else:
                _show_invoice(inv)

    @app.command("rerate")
    def rerate(
        period: Annotated[str, typer.Option(help="Billing period YYYY-MM.")],
        policy: PolicyOpt = None,
        before: Annotated[
            list[Path] | None,
            typer.Option("--before", help="The policy the period was billed under (default: same)."),
        ] = None,
        reprice: Annotated[bool, typer.Option(help="Recompute every cost from the price book.")] = False,
        customer: Annotated[str | None, typer.Option(help="Only this customer.")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Recompute a period after a policy or price correction and show the difference."""
        with _clean_errors():
            from jevons.policy.periods import period_bounds

            period_bounds(period)
            after_engine = _engine(policy, with_store_grants=True)
            before_engine = _engine(before, with_store_grants=True) if before else after_engine
            from jevons.policy.periods import period_of

            evs = _ledger_events(after_engine, customer, period)
            customers = sorted({e.customer for e in evs if period_of(e.timestamp) == period
                                and (customer is None or e.customer == customer)},
                               key=lambda c: c or "")
            rows: list[dict[str, Any]] = []
            for cust in customers:
                mine = [e for e in evs if e.customer == cust]
                old = before_engine.invoice(cust, period, mine)
                new = after_engine.invoice(cust, period, _repriced(mine) if reprice else mine)
                rows.append({
                    "customer": cust, "before": str(old.total_due), "after": str(new.total_due),
                    "difference": str(new.total_due - old.total_due),
                    "cost_before": str(old.cost), "cost_after": str(new.cost),
                    "margin_before": str(old.margin), "margin_after": str(new.margin),
                })
            if as_json:
                typer.echo(json.dumps({"period": period, "customers": rows}, indent=2))
                return
            from rich.console import Console
            from rich.table import Table

            table = Table(title=f"Re-rating {period}")
            for col in ("customer", "before", "after", "difference", "cost before", "cost after"):
                table.add_column(col, justify="left" if col == "customer" else "right")
            for r in rows:
                table.add_row(r["customer"] or "(unattributed)", r["before"], r["after"], r["difference"],
                              _fmt(Decimal(r["cost_before"])), _fmt(Decimal(r["cost_after"])))
            Console().print(table)

    @credits_app.command("grant")
    def grant(
        customer: Annotated[str, typer.Option(help="Customer id.")],
        amount: Annotated[str, typer.Option(help="USD amount.")],
        kind: Annotated[str, typer.Option(help="paid or promotional.")] = "paid",
        priority: Annotated[int, typer.Option(help="Lower is drawn first.")] = 0,
        effective: Annotated[str | None, typer.Option(help="ISO date (default now).")] = None,
        expires: Annotated[str | None, typer.Option(help="ISO date.")] = None,
        grant_id: Annotated[str | None, typer.Option("--id", help="Grant id (default generated).")] = None,
    ) -> None:
        """Add a credit grant (a top-up) to a customer's wallet."""
        with _clean_errors():
            import uuid

            from jevons.policy.engine import Grant
            from jevons.policy.model import CreditGrantSpec
            from jevons.policy.store import open_policy_store

            if kind not in ("paid", "promotional"):
                _die(f"--kind: {kind!r} is not 'paid' or 'promotional'")
            spec = CreditGrantSpec.model_validate({
                "id": grant_id or f"grant-{uuid.uuid4().hex[:12]}",
                "amount": _money(amount, "--amount"), "kind": kind, "priority": priority,
                "effective": _parse_when(effective, "--effective") or datetime.now(UTC),
                "expires": _parse_when(expires, "--expires"),
            })
            g = Grant.from_spec(customer, spec, spec.id or "")
            store = open_policy_store()
            try:
                store.add_grant(g)
            finally:
                store.close()
            typer.echo(f"granted {g.id}: ${g.amount} {g.kind} to {customer}")

    @credits_app.command("list")
    def list_grants(
        customer: Annotated[str | None, typer.Option(help="Only this customer.")] = None,
        policy: PolicyOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Credit grants: from the wallet store and (with --policy) the policy file."""
        with _clean_errors():
            from jevons.policy.store import open_policy_store

            store = open_policy_store()
            try:
                grants = store.grants(customer)
            finally:
                store.close()
            if policy:
                from jevons.policy.engine import PolicyEngine

                eng = PolicyEngine(_policies(policy))
                names = {customer} if customer else {
                    c for p in eng.policies.versions for c in p.customers}
                for c in sorted(n for n in names if n):
                    grants.extend(eng.grants_for(c))
            if as_json:
                typer.echo(json.dumps([g.to_dict() for g in grants], indent=2))
                return
            for g in grants:
                exp = g.expires.date().isoformat() if g.expires else "never"
                typer.echo(f"{g.customer}\t{g.id}\t${g.amount}\t{g.kind}\tpriority {g.priority}"
                           f"\tfrom {g.effective.date().isoformat()}\texpires {exp}")

    @credits_app.command("balance")
    def balance(
        customer: Annotated[str, typer.Option(help="Customer id.")],
        at: Annotated[str | None, typer.Option(help="ISO date-time (default now).")] = None,
        policy: PolicyOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """A customer's credit balance (paid, promotional): now from the running balances, or
        as of ``--at`` by re-rating the ledger's events up to then."""
        with _clean_errors():
            from jevons.policy.engine import PolicyEngine
            from jevons.policy.periods import period_of
            from jevons.policy.rules import rating_context
            from jevons.policy.runtime import PolicyRuntime
            from jevons.policy.store import open_policy_store

            when = _parse_when(at, "--at")
            if when is None:
                store = open_policy_store()
                try:
                    rt = PolicyRuntime(PolicyEngine(_policies(policy)), store)
                    when = datetime.now(UTC)
                    bal = rt.balances(customer, when)["credits"]
                finally:
                    store.close()
            else:
                engine = _engine(policy, with_store_grants=True)
                evs = [e for e in _ledger_events(engine, customer, period_of(when)) if e.timestamp < when]
                _, rater = engine.rate_customer(customer, evs)
                rater.start(when)
                with rating_context():
                    rater.advance_to(period_of(when))
                bal = rater.credit_balance(when)
            if as_json:
                typer.echo(json.dumps({k: str(v) for k, v in bal.items()}))
            else:
                typer.echo(f"{customer}: ${bal['total']} (paid ${bal['paid']}, "
                           f"promotional ${bal['promotional']}) at {when.isoformat()}")


def _repriced(events: list[Event]) -> list[Event]:
    import jevons

    book = jevons.default_book()
    return [e.with_cost(book.cost(e.model_requested, e.usage, provider=e.provider, at=e.timestamp,
                                  tier=e.service_tier, region=e.region)) for e in events]
