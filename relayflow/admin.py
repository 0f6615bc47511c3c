"""`relayflow-admin`, deprecated: the operator commands are `relayflow`'s now (`relayflow.cli`).

This alias keeps scripts and docs that call it working: it says so once on stderr and runs the
same command of `relayflow`, with the same flags. `relayflow-admin workflows cancel|retry|signal`
went to the broker, so they run as `relayflow workflows … --broker` (`relayflow workflows …`
without it goes through the gateway). Errors now exit 2, as every `relayflow` command's.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from relayflow.cli import main as cli_main

# `relayflow-admin workflows <one of these>` published to the broker.
_OVER_BROKER = ("cancel", "retry", "signal")
# The root options that take a value (the one after them is not the area).
_ROOT_OPTIONS = ("--amqp-url", "--namespace", "--database-url", "--url")


def translate(argv: Sequence[str]) -> list[str]:
    """The `relayflow` arguments of a `relayflow-admin` command line."""
    args = list(argv)
    index = 0
    while index < len(args) and args[index].startswith("-"):
        index += 2 if args[index] in _ROOT_OPTIONS else 1
    if args[index : index + 1] == ["workflows"] and args[index + 1 : index + 2] in (
        [name] for name in _OVER_BROKER
    ):
        return [*args, "--broker"]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    sys.stderr.write(
        "relayflow-admin: deprecated, use `relayflow` (the same commands; `relayflow --help`)\n"
    )
    cli_main(translate(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
