"""`relayflow`, the command line: workflows through the gateway (HTTP), and the operator's
commands over the broker and the database. `relayflow.cli.app` wires the areas; each area is
its own module."""

from relayflow.cli.app import build, main
from relayflow.cli.errors import CliError, Exit

__all__ = ["CliError", "Exit", "build", "main"]
