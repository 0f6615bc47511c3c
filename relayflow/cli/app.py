"""The `relayflow` command: its areas wired together, the root options, and `main`.

    relayflow workflows start|status|list|tail|cancel|retry|signal …   (the gateway, over HTTP)
    relayflow dead-letters list|show|redrive …                          (the broker)
    relayflow keys create|list|revoke …                                 (the database)
    relayflow broker setup …                                            (a definitions file)
    relayflow migrate                                                   (the database)

Every command takes `--json`; errors are one `relayflow: …` line on stderr. Exit codes:
`relayflow.cli.errors.Exit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from relayflow.cli import broker, dead_letters, keys, migrate, workflows
from relayflow.cli.context import DEFAULT_URL, URL_ENV, Context
from relayflow.cli.errors import CliError


class _Root(TyperGroup):
    """The root group: every command runs inside its `invoke`, so this is where a `CliError`
    becomes its one line on stderr and exit code 2, however the app is run (the console
    script, `python -m relayflow.cli`, typer's CliRunner)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            exc.show()
            raise typer.Exit(exc.exit_code) from None


def build() -> typer.Typer:
    """A new app (typer apps hold their commands: one per call, no module-level state)."""
    app = typer.Typer(
        name="relayflow",
        cls=_Root,
        help="Durable workflows over RabbitMQ and PostgreSQL: start, watch and operate them.",
        no_args_is_help=True,
        # Plain click output: shell-friendly errors and help, no boxes or colours.
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def root(
        ctx: typer.Context,
        url: Annotated[
            str, typer.Option(envvar=URL_ENV, help="the gateway (the key: RELAYFLOW_API_KEY)")
        ] = DEFAULT_URL,
        amqp_url: Annotated[
            str | None, typer.Option(help="the broker, for operator commands; default: AMQP_URL")
        ] = None,
        namespace: Annotated[
            str | None, typer.Option(help="the queues' namespace; default: RELAYFLOW_NAMESPACE")
        ] = None,
        database_url: Annotated[
            str | None, typer.Option(help="the database, for operator commands; DATABASE_URL")
        ] = None,
    ) -> None:
        given = ctx.obj if isinstance(ctx.obj, Context) else Context()
        ctx.obj = replace(
            given,
            url=url.rstrip("/"),
            amqp_url_option=amqp_url,
            namespace_option=namespace,
            database_url_option=database_url,
        )

    app.add_typer(workflows.app, name="workflows")
    app.add_typer(dead_letters.app, name="dead-letters")
    app.add_typer(keys.app, name="keys")
    app.add_typer(broker.app, name="broker")
    app.command("migrate")(migrate.migrate_command)
    return app


def main(argv: Sequence[str] | None = None, prog_name: str = "relayflow") -> None:
    """Run a command and exit with its code (never returns)."""
    build()(args=list(argv) if argv is not None else None, prog_name=prog_name)
