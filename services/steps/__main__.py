"""`python -m services.steps` / `relayflow-steps`: run the step service."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from relayflow.runtime import run
from services.steps.service import serve
from services.steps.settings import StepServiceSettings


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="relayflow-steps", description=__doc__)
    parser.add_argument(
        "--steps",
        help="comma-separated steps this process serves (default: RELAYFLOW_STEPS, else all)",
    )
    args = parser.parse_args(argv)
    overrides = {"steps": args.steps} if args.steps else {}
    settings = StepServiceSettings(**overrides)

    async def amain(stop: asyncio.Event) -> None:
        await serve(settings, stop)

    run(
        "steps",
        amain,
        log_level=settings.log_level,
        metrics=(settings.metrics_host, settings.metrics_port),
        metrics_enabled=settings.metrics_enabled,
    )


if __name__ == "__main__":
    main()
