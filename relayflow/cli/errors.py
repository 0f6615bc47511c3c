"""How a `relayflow` command ends: its exit codes, and the one error every command raises when
it cannot be carried out."""

from __future__ import annotations

import sys
from enum import IntEnum
from typing import IO


class Exit(IntEnum):
    """The exit codes, the same for every command (README, "CLI")."""

    # Done; for `start --wait` and `tail`, the workflow completed.
    OK = 0
    # `start --wait` and `tail`: the workflow ended without completing (failed, cancelled,
    # compensated or compensation_failed).
    NOT_COMPLETED = 1
    # The command could not be carried out: a usage error, a refusal by the gateway (its
    # `error` is shown), a server that does not answer, an operator command refused.
    ERROR = 2


class CliError(Exception):
    """A command that cannot be carried out; the message says why (and, where it helps, what
    to do). Shown as one `relayflow: …` line on stderr, exit code 2 (`relayflow.cli.app`)."""

    exit_code = Exit.ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def format_message(self) -> str:
        return self.message

    def show(self, file: IO[str] | None = None) -> None:
        out = file or sys.stderr
        out.write(f"relayflow: {self.message}\n")
        out.flush()
