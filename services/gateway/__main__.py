"""`relayflow-gateway` / `python -m services.gateway`: serve the HTTP API until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio

from relayflow.runtime import run
from services.gateway.app import create_app
from services.gateway.server import build_server, serve_until
from services.gateway.settings import GatewaySettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="relayflow-gateway", description=__doc__)
    parser.add_argument("--host", help="listen address (RELAYFLOW_GATEWAY_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (RELAYFLOW_GATEWAY_PORT, 8000)")
    args = parser.parse_args(argv)
    settings = GatewaySettings()
    overrides = {
        field: value
        for field, value in (("gateway_host", args.host), ("gateway_port", args.port))
        if value is not None
    }
    if overrides:
        settings = settings.model_copy(update=overrides)

    async def amain(stop: asyncio.Event) -> None:
        server = build_server(create_app(settings, stopping=stop), settings)
        await serve_until(server, stop)

    run("gateway", amain, log_level=settings.log_level, metrics_enabled=settings.metrics_enabled)


if __name__ == "__main__":
    main()
