"""The ``jevons`` command line. Each layer registers its own commands from its own module."""

from __future__ import annotations

import typer

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


def main() -> None:
    app()
