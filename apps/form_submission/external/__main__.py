"""`python -m apps.form_submission.external` / `relayflow-external`: run the external-system
stand-in."""

from __future__ import annotations

import asyncio

from apps.form_submission.external.service import serve
from apps.form_submission.external.settings import ExternalSettings
from relayflow.probes import Probes
from relayflow.runtime import run


def main() -> None:
    settings = ExternalSettings()
    probes = Probes()

    async def amain(stop: asyncio.Event) -> None:
        await serve(settings, stop, probes)

    run(
        "external",
        amain,
        settings=settings,
        metrics=(settings.metrics_host, settings.metrics_port),
        probes=probes,
    )


if __name__ == "__main__":
    main()
