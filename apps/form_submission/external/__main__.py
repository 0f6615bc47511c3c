"""`python -m apps.form_submission.external` / `relayflow-external`: run the external-system
stand-in."""

from __future__ import annotations

import asyncio

from apps.form_submission.external.service import serve
from apps.form_submission.external.settings import ExternalSettings
from relayflow.runtime import run


def main() -> None:
    settings = ExternalSettings()

    async def amain(stop: asyncio.Event) -> None:
        await serve(settings, stop)

    run(
        "external",
        amain,
        log_level=settings.log_level,
        metrics=(settings.metrics_host, settings.metrics_port),
        metrics_enabled=settings.metrics_enabled,
    )


if __name__ == "__main__":
    main()
