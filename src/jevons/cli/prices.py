"""CLI commands of the prices layer: ``jevons cost`` and ``jevons prices ...``.

Every command reads the same book the library uses (bundled + cached live + overrides) and
never touches the network, except ``jevons prices update``. Bad input is one line on stderr
and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, NoReturn

import typer

from jevons.prices.cost import Cost

__all__ = ["register"]

EXIT_BAD_INPUT = 2
EXIT_UNPRICED = 3


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _clean_errors() -> Iterator[None]:
    """Turn expected errors (bad config, bad values, unreadable files) into one line."""
    from jevons.config import ConfigError

    try:
        yield
    except (ConfigError, ValueError, OSError) as exc:
        _fail(str(exc))


def _settings() -> Any:
    from jevons.config import load_settings

    return load_settings()


def _book(settings: Any) -> Any:
    from jevons.prices.loader import build_book

    return build_book(settings)


def _parse_at(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        _fail(f"--at {raw!r} is not an ISO date or datetime (e.g. 2025-06-01 or 2025-06-01T12:00:00Z)")
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _parse_tier(raw: str | None) -> str | None:
    from jevons.prices.model import ServiceTier

    if raw is None:
        return None
    choices = [t.value for t in ServiceTier]
    if raw.lower() not in choices:
        _fail(f"--tier {raw!r} is not one of {', '.join(choices)}")
    return raw.lower()


def _per_mtok(rate: Decimal | None) -> str:
    if rate is None:
        return "-"
    return f"{rate.scaleb(6).normalize():f}"


def _print_cost(cost: Cost) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{cost.model_requested} -> {cost.provider}/{cost.model}", show_footer=False)
    table.add_column("dimension")
    table.add_column("tokens", justify="right")
    table.add_column("USD / 1M", justify="right")
    table.add_column("USD", justify="right")
    for line in cost.lines:
        label = line.dimension + (f" (as {line.priced_as})" if line.priced_as else "")
        table.add_row(label, str(line.tokens), _per_mtok(line.usd_per_token), f"{line.usd:f}")
    console.print(table)
    total = "-" if cost.total_usd is None else f"{cost.total_usd:f}"
    typer.echo(f"total USD {total}  status {cost.status}  price {cost.price_version}")
    for note in cost.notes:
        typer.echo(f"note: {note}")


def cost_command(
    model: Annotated[str, typer.Argument(help="model name as you call it or as the provider returns it")],
    provider: Annotated[str | None, typer.Option(help="provider hint: openai, anthropic, gemini...")] = None,
    input_tokens: Annotated[
        int, typer.Option("--input", min=0, help="total input tokens, cache reads and writes included")
    ] = 0,
    output_tokens: Annotated[
        int, typer.Option("--output", min=0, help="total output tokens, reasoning included")
    ] = 0,
    cache_read: Annotated[int, typer.Option("--cache-read", min=0)] = 0,
    cache_write_5m: Annotated[int, typer.Option("--cache-write-5m", min=0)] = 0,
    cache_write_1h: Annotated[int, typer.Option("--cache-write-1h", min=0)] = 0,
    reasoning: Annotated[int, typer.Option("--reasoning", min=0, help="reasoning tokens, in --output")] = 0,
    web_search: Annotated[int, typer.Option("--web-search", min=0, help="web searches")] = 0,
    at: Annotated[str | None, typer.Option("--at", help="price in force at this ISO date/time")] = None,
    tier: Annotated[str | None, typer.Option("--tier", help="standard, batch, flex or priority")] = None,
    region: Annotated[str | None, typer.Option("--region", help="client's cloud region (Bedrock)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Exact cost of one call. Exit 0 when priced or estimated, 3 when no price is known."""
    from jevons.usage import Usage

    when = _parse_at(at)
    service_tier = _parse_tier(tier)
    with _clean_errors():
        usage = Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read,
            cache_write_5m_tokens=cache_write_5m,
            cache_write_1h_tokens=cache_write_1h,
            reasoning_tokens=reasoning,
            web_search_requests=web_search,
        )
        book = _book(_settings())
        result = book.cost(model, usage, provider=provider, at=when, tier=service_tier, region=region)
    if as_json:
        data = result.to_dict()
        keys = ("model_requested", "model", "provider", "status", "total_usd", "lines", "price_version",
                "source", "as_of")
        out = {k: data[k] for k in keys}
        out.update({k: v for k, v in data.items() if k not in out})
        typer.echo(json.dumps(out, indent=2))
    else:
        if result.lines:
            _print_cost(result)
    if result.status == "unpriced":
        why = "; ".join(result.notes) or "no price"
        _fail(f"{model}: unpriced ({why})", EXIT_UNPRICED)
    if not as_json and not result.lines:
        typer.echo(f"total USD {result.total_usd}  status {result.status}  price {result.price_version}")


prices_app = typer.Typer(help="The price book: update, inspect, diff, accept.", no_args_is_help=True)


@prices_app.command("update")
def update_command(
    source: Annotated[str, typer.Option("--source", help="openrouter, bedrock or all")] = "all",
    openrouter_url: Annotated[
        str | None, typer.Option("--openrouter-url", help="base URL of OpenRouter")
    ] = None,
    bedrock_url: Annotated[
        str | None, typer.Option("--bedrock-url", help="base URL of the AWS price list")
    ] = None,
) -> None:
    """Fetch live prices, guard them and cache them in JEVONS_HOME."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskID, TextColumn

    from jevons.prices.refresh import SOURCES, refresh

    if source != "all" and source not in SOURCES:
        _fail(f"--source {source!r} is not one of openrouter, bedrock, all")
    sources = list(SOURCES) if source == "all" else [source]
    console = Console(stderr=True)
    with _clean_errors():
        settings = _settings()
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
        with Progress(*columns, console=console, transient=True) as bar:
            tasks: dict[str, TaskID] = {}

            def progress(description: str, completed: int, total: int) -> None:
                group = description.split()[0]
                if group not in tasks:
                    tasks[group] = bar.add_task(description, total=total)
                bar.update(tasks[group], description=description, completed=completed, total=total)

            report = refresh(settings, sources=sources, openrouter_url=openrouter_url,
                             bedrock_url=bedrock_url, progress=progress)
    for src in report.sources:
        if src.status == "failed":
            age = _age(src.last_success_at)
            typer.echo(f"{src.name}: FAILED ({src.error}); keeping the last good prices{age}", err=True)
        else:
            typer.echo(f"{src.name}: {src.status}, {src.versions} prices")
            if src.skipped:
                typer.echo(f"  {len(src.skipped)} entries not priced, e.g. {src.skipped[0]}")
    counts = report.counts()
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "no price changed"
    typer.echo(f"changes: {summary}")
    for item in report.quarantined:
        typer.echo(f"quarantined {item['id']} {item['key']}: {item['reason']}")
    if report.quarantined:
        typer.echo("review with `jevons prices diff`; apply with `jevons prices accept ID`")
    if not report.ok:
        raise typer.Exit(1)


def _age(iso: str | None) -> str:
    if not iso:
        return " (never fetched successfully)"
    seconds = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    if seconds < 3600:
        return f" (last success {seconds / 60:.0f} min ago)"
    if seconds < 86400 * 2:
        return f" (last success {seconds / 3600:.1f} h ago)"
    return f" (last success {seconds / 86400:.1f} days ago)"


@prices_app.command("show")
def show_command(
    model: Annotated[str, typer.Argument()],
    provider: Annotated[str | None, typer.Option(help="provider hint")] = None,
    at: Annotated[str | None, typer.Option("--at", help="price in force at this ISO date/time")] = None,
    tier: Annotated[str | None, typer.Option("--tier")] = None,
    region: Annotated[str | None, typer.Option("--region")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="say how the name was resolved")] = False,
) -> None:
    """The price of a model (and with --explain, how its name was resolved)."""
    when = _parse_at(at)
    service_tier = _parse_tier(tier)
    with _clean_errors():
        book = _book(_settings())
        res, version, notes = book.lookup(model, provider=provider, at=when, tier=service_tier, region=region)
    if version is None:
        typer.echo(res.explain(), err=True)
        for note in notes:
            typer.echo(f"note: {note}", err=True)
        _fail(f"{model}: no price known", EXIT_UNPRICED)
    history = [v for v in book.versions(version.provider, version.model)]
    if as_json:
        out = version.to_dict()
        out["resolution"] = {
            "requested": res.requested, "provider": res.provider, "model": res.model, "step": res.step,
            "candidates": list(res.candidates), "geo": res.geo, "region": res.region,
            "explain": res.explain(),
        }
        out["notes"] = list(notes)
        typer.echo(json.dumps(out, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if explain:
        typer.echo(res.explain())
        for note in notes:
            typer.echo(f"note: {note}")
    title = f"{version.provider}/{version.model} [{version.service_tier.value}]"
    if version.geo:
        title += f" geo={version.geo}"
    if version.region:
        title += f" @{version.region}"
    table = Table(title=title)
    table.add_column("dimension")
    table.add_column("USD / 1M tokens (per unit for request, web_search)", justify="right")
    for dim, rate in sorted(version.rates.items()):
        shown = f"{rate:f}" if dim.value in ("request", "web_search") else _per_mtok(rate)
        table.add_row(dim.value, shown)
    for t in version.tiers:
        for dim, rate in sorted(t.rates.items()):
            table.add_row(f"{dim.value} (input > {t.above_input_tokens})", _per_mtok(rate))
    console.print(table)
    typer.echo(f"version {version.version_id}")
    typer.echo(
        f"source {version.source}, valid {version.valid_from or 'always'} .. {version.valid_to or 'now'}, "
        f"fetched {version.fetched_at or '-'}"
    )
    if explain and len(history) > 1:
        typer.echo(f"{len(history)} versions of this model in the book:")
        for v in sorted(history, key=lambda v: (v.service_tier.value, v.geo or "", v.region or "",
                                                  v.valid_from or datetime.min.replace(tzinfo=UTC))):
            typer.echo(f"  {v.version_id}  {v.valid_from or '-'} .. {v.valid_to or '-'}")


@prices_app.command("list")
def list_command(
    provider: Annotated[str | None, typer.Option(help="only this provider")] = None,
) -> None:
    """Every model in the book with its current standard input/output price."""
    from rich.console import Console
    from rich.table import Table

    from jevons.prices.model import Dim

    with _clean_errors():
        book = _book(_settings())
    keys = book.models(provider)
    if not keys:
        _fail(f"no models of provider {provider!r} in the price book")
    table = Table(title=f"{len(keys)} models")
    for name in ("provider", "model", "input / 1M", "output / 1M", "variants", "source"):
        table.add_column(name, justify="right" if "/" in name else "left", no_wrap=name == "model")
    for prov, model in keys:
        current = [v for v in book.versions(prov, model) if v.valid_to is None]
        if not current:
            continue
        standard = [v for v in current if v.service_tier.value == "standard" and v.geo is None]
        shown = max(standard or current, key=lambda v: (v.layer.value, v.region == "us-east-1"))
        rates = shown.rates
        table.add_row(prov, model, _per_mtok(rates.get(Dim.INPUT)), _per_mtok(rates.get(Dim.OUTPUT)),
                      str(len(current)), shown.source)
    Console().print(table)


@prices_app.command("diff")
def diff_command(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What the last refresh changed (new models, moved prices, quarantined prices)."""
    from jevons.prices.store import PriceStore

    with _clean_errors():
        diff = PriceStore(_settings().home_dir).diff()
    if not diff:
        _fail("no refresh recorded yet; run `jevons prices update`", 1)
    if as_json:
        typer.echo(json.dumps(diff, indent=2))
        return
    typer.echo(f"refresh of {diff.get('refreshed_at')}")
    for src in diff.get("sources", []):
        typer.echo(f"  {src['name']}: {src['status']}" + (f" ({src['error']})" if src.get("error") else ""))
    changes = diff.get("changes", [])
    if not changes:
        typer.echo("no price changed")
    for change in changes:
        typer.echo(_describe_change(change))


def _describe_change(change: dict[str, Any]) -> str:
    kind = change["kind"]
    head = f"{kind:<11} {change['key']}"
    if change.get("id"):
        head += f"  [{change['id']}]"
    old, new = change.get("old") or {}, change.get("new") or {}
    moved = []
    for dim in sorted(set(old) | set(new)):
        if old.get(dim) != new.get(dim):
            before = _per_mtok(Decimal(old[dim])) if dim in old else "-"
            after = _per_mtok(Decimal(new[dim])) if dim in new else "-"
            moved.append(f"{dim} {before} -> {after} /1M")
    text = head + ("  " + ", ".join(moved) if moved and kind != "new" else "")
    if change.get("reason") and kind in ("quarantined", "invalid"):
        text += f"  ({change['reason']})"
    return text


@prices_app.command("accept")
def accept_command(
    ids: Annotated[list[str] | None, typer.Argument(help="quarantine ids (or keys) to apply")] = None,
    all_items: Annotated[bool, typer.Option("--all", help="apply every quarantined price")] = False,
) -> None:
    """Apply quarantined prices (see `jevons prices diff` or `jevons prices update`)."""
    from jevons.prices.refresh import accept
    from jevons.prices.store import PriceStore

    if not ids and not all_items:
        with _clean_errors():
            items = PriceStore(_settings().home_dir).quarantine()
        if not items:
            typer.echo("nothing is quarantined")
            return
        for item in items:
            typer.echo(f"{item.get('id')}  {item.get('key')}: {item.get('reason')}")
        _fail("name the ids to accept, or pass --all", 1)
    with _clean_errors():
        result = accept(_settings(), None if all_items else ids)
    for line in result.accepted:
        typer.echo(f"accepted {line}")
    for line in result.refused:
        typer.echo(f"refused {line}", err=True)
    for ident in result.unknown:
        typer.echo(f"error: no quarantined price {ident!r}", err=True)
    if result.unknown or (result.refused and not result.accepted):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this layer's commands to the top-level app."""
    app.command("cost")(cost_command)
    app.add_typer(prices_app, name="prices")



