"""`python -m services.external` / `relayflow-external`: run the external-system stand-in."""

from __future__ import annotations

import asyncio

from relayflow.runtime import run
from services.external.service import serve
from services.external.settings import ExternalSettings


def main() -> None:
    settings = ExternalSettings()

    async def amain(stop: asyncio.Event) -> None:
        await serve(settings, stop)

    run("external", amain, log_level=settings.log_level)


if __name__ == "__main__":
    main()
