"""The ``jevons`` command line. Each layer registers its own commands from its own module."""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.29 vendors click; before that it used the click package
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer
    from click.exceptions import UsageError  # type: ignore[assignment]

from jevons.cli import insight as insight_cli
from jevons.cli import ledger as ledger_cli
from jevons.cli import policy as policy_cli
from jevons.cli import prices as prices_cli

app = typer.Typer(
    name="jevons",
    help="What each LLM call really cost, and what to bill for it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _module in (prices_cli, ledger_cli, policy_cli, insight_cli):
    _module.register(app)

USAGE_ERROR_EXIT = 2


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. A bad flag or value is one line on stderr and exit 2 (not a usage box)."""
    try:
        code = app(args=argv, prog_name="jevons", standalone_mode=False)
    except UsageError as exc:
        message = exc.format_message()
        if not message:  # no arguments: the help was shown, nothing went wrong
            sys.exit(0)
        where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
        typer.echo(f"error: {where}{message}", err=True)
        sys.exit(USAGE_ERROR_EXIT)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
