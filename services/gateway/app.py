"""The app factory. The lifespan owns every resource — pool, broker connection, publisher, event
hub — and hands them to handlers as one typed `GatewayState`; nothing lives in module globals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from relayflow.amqp import Publisher, connect, quietly
from relayflow.applications import load_workflows
from relayflow.auth import AuthSettings, OidcProvider, OidcSettings
from relayflow.db import close_pool, create_pool
from relayflow.hops import HopTrace
from relayflow.runtime import prepare_database
from relayflow.topology import Topology
from services.gateway import (
    access,
    checks,
    dashboard,
    dead_letters,
    oidc_signin,
    outages,
    overview,
    sessions,
)
from services.gateway.checks import InputError
from services.gateway.control import cancel_workflow, retry_workflow
from services.gateway.events import EventHub
from services.gateway.limits import Limits
from services.gateway.metrics import (
    Arrival,
    Handler,
    metrics_endpoint,
    timed_handlers,
    timed_routes,
)
from services.gateway.openapi import build_openapi
from services.gateway.pages import healthz, load_assets, openapi_endpoint, readyz
from services.gateway.reads import Reads
from services.gateway.responses import error_response
from services.gateway.settings import GatewaySettings
from services.gateway.signals import signal_workflow
from services.gateway.state import STATE_KEY, GatewayState
from services.gateway.store import GatewayStore
from services.gateway.stream_tokens import mint_stream_token
from services.gateway.submit import start_workflow, submit_form
from services.gateway.workflows import (
    all_events,
    get_workflow,
    list_workflows,
    step_items,
    workflow_events,
)

log = logging.getLogger(__name__)


def create_app(
    settings: GatewaySettings | None = None,
    *,
    stopping: asyncio.Event | None = None,
    auth: AuthSettings | None = None,
    oidc: OidcSettings | None = None,
) -> Starlette:
    """`stopping`, once set, ends every open event stream so that the server can drain (the
    process's stop event; uvicorn only closes the lifespan after connections are gone). `auth`
    holds the secret API keys are hashed under and cookies and stream tokens signed with
    (default: from the environment), `oidc` the identity provider people's tokens come from
    (default: from the environment; no issuer: none)."""
    settings = settings or GatewaySettings()
    # Before anything opens: a bind that needs keys and has no secret to check them with.
    credentials = access.server_credentials(
        settings, auth or AuthSettings(), oidc_settings=oidc or OidcSettings()
    )
    # Definitions are checked here, so a broken workflow module fails before anything opens;
    # so is the workflow /submit starts (ConfigurationError: the setting names none served).
    registry = load_workflows(settings.apps, settings.workflows)
    submit_workflow = settings.submit_workflow(registry)
    topology = Topology.from_settings(settings)
    assets = load_assets()
    document = build_openapi(registry, submit_workflow=settings.gateway_submit_workflow)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            pool = await prepare_database(settings)
            stack.push_async_callback(close_pool, pool)
            reads = Reads(GatewayStore(pool))
            if settings.read_database_url is not None:
                read_pool = await create_pool(
                    settings.read_database_url,
                    min_size=settings.db_pool_min,
                    max_size=settings.db_pool_max,
                )
                stack.push_async_callback(close_pool, read_pool)
                reads = Reads(reads.primary, GatewayStore(read_pool))
            provider = None
            if credentials is not None and credentials.oidc is not None:
                provider = await stack.enter_async_context(OidcProvider.open(credentials.oidc))
            gate = await access.decide(settings, credentials, pool, provider)
            connection = await connect(
                settings.amqp_url, name="relayflow-gateway", heartbeat=settings.amqp_heartbeat
            )
            stack.push_async_callback(quietly, "closing the broker connection", connection.close)
            # The whole topology, so that workflow.start is routable before the orchestrator runs.
            await topology.ensure(connection, registry.task_names())
            publisher = await Publisher.open(
                connection, confirm_timeout=settings.gateway_publish_timeout
            )
            stack.push_async_callback(publisher.close)
            hops = HopTrace.open(settings.hop_trace, "gateway")
            stack.callback(hops.close)
            hub = EventHub(
                buffer=settings.gateway_subscriber_buffer,
                recent=settings.gateway_recent_events,
                hops=hops,
            )
            stack.push_async_callback(hub.stop)
            await hub.start(await connection.channel(), topology, publisher, settings.senders)
            if stopping is not None:
                watcher = asyncio.create_task(_close_on(stopping, hub), name="gateway:stopping")
                stack.callback(watcher.cancel)
            log.info(
                "gateway ready: namespace %s, workflows %s, POST /submit %s",
                settings.namespace,
                ", ".join(registry.names()),
                f"starts {submit_workflow}" if submit_workflow else "off",
            )
            yield {
                STATE_KEY: GatewayState(
                    settings=settings,
                    registry=registry,
                    submit_workflow=submit_workflow,
                    topology=topology,
                    pool=pool,
                    store=reads.primary,
                    reads=reads,
                    connection=connection,
                    publisher=publisher,
                    hub=hub,
                    access=gate,
                    limits=Limits.from_settings(settings),
                    hops=hops,
                )
            }

    routes = [
        Route("/", dashboard.home, methods=["GET"]),
        Route("/ui/list", dashboard.list_fragment, methods=["GET"]),
        Route("/ui/workflows/{workflow_id}", dashboard.workflow_page, methods=["GET"]),
        Route("/ui/workflows/{workflow_id}/panel", dashboard.panel_fragment, methods=["GET"]),
        Route("/ui/overview", overview.overview_page, methods=["GET"]),
        Route("/ui/dead-letters", dead_letters.dead_letters_page, methods=["GET"]),
        Route("/ui/dead-letters/{message_id}", dead_letters.dead_letter_page, methods=["GET"]),
        *(
            Route(f"/static/{name}", asset.respond, methods=["GET"])
            for name, asset in sorted(assets.items())
        ),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint(document).respond, methods=["GET"]),
        Route("/submit", submit_form, methods=["POST"]),
        Route("/workflows", list_workflows, methods=["GET"]),
        WorkflowPathRoute("/workflows/{name_or_id}", _workflow_path, methods=["GET", "POST"]),
        Route("/workflows/{workflow_id}/events", workflow_events, methods=["GET"]),
        Route("/workflows/{workflow_id}/steps/{step_name}/items", step_items, methods=["GET"]),
        Route("/workflows/{workflow_id}/cancel", cancel_workflow, methods=["POST"]),
        Route("/workflows/{workflow_id}/retry", retry_workflow, methods=["POST"]),
        Route("/workflows/{workflow_id}/signals/{signal_name}", signal_workflow, methods=["POST"]),
        Route("/events", all_events, methods=["GET"]),
        Route("/dead-letters", dead_letters.list_dead_letters, methods=["GET"]),
        Route("/dead-letters/redrive", dead_letters.redrive_dead_letters, methods=["POST"]),
        Route("/dead-letters/{message_id}", dead_letters.get_dead_letter, methods=["GET"]),
        Route("/stream-tokens", mint_stream_token, methods=["POST"]),
        Route(sessions.SIGN_IN_PATH, sessions.sign_in_path, methods=["GET", "POST"]),
        Route(sessions.SIGN_OUT_PATH, sessions.sign_out, methods=["POST"]),
        Route(sessions.OIDC_SIGN_IN_PATH, oidc_signin.start, methods=["GET"]),
        Route(sessions.OIDC_CALLBACK_PATH, oidc_signin.callback, methods=["GET"]),
    ]
    guarded = access.guard(routes)
    handlers: dict[Any, Handler] = {
        HTTPException: _http_error,
        InputError: _input_error,
        **outages.handlers(),
        Exception: _server_error,
    }
    if not settings.metrics_enabled:
        return Starlette(routes=guarded, lifespan=lifespan, exception_handlers=handlers)
    # Requests timed where their responses are made (services.gateway.metrics).
    return Starlette(
        routes=timed_routes(guarded),
        lifespan=lifespan,
        middleware=[Middleware(Arrival)],
        exception_handlers=timed_handlers(handlers),
    )


class WorkflowPathRoute(Route):
    """`/workflows/{x}` is two paths of the API document: `/workflows/{name}` (POST, one per
    workflow served) when `x` names a workflow this gateway serves, else `/workflows/{workflowId}`
    (GET). One route serves both; what a concrete path allows — and a 405's `Allow` — is what the
    document says of it."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        segment = str(scope["path_params"]["name_or_id"])
        state = scope.get("state", {}).get(STATE_KEY)
        named = isinstance(state, GatewayState) and state.registry.get(segment) is not None
        allowed = ("POST",) if named else ("GET", "HEAD")
        if scope["method"] not in allowed:
            if named:
                why = (
                    f"{checks.shown(segment)} names a workflow: POST /workflows/{segment} starts it"
                )
            else:
                known = ", ".join(state.registry.names()) if isinstance(state, GatewayState) else ""
                why = (
                    f"no workflow named {checks.shown(segment)} to start (known: {known}); "
                    "GET /workflows/{workflowId} reads a workflow"
                )
            raise HTTPException(405, why, headers={"Allow": ", ".join(allowed)})
        await super().handle(scope, receive, send)


async def _workflow_path(request: Request) -> Response:
    """`/workflows/{x}` names a workflow to start (POST) or a workflow to read (GET)."""
    segment: str = request.path_params["name_or_id"]
    if request.method == "POST":
        return await start_workflow(request, segment)
    return await get_workflow(request, segment)


async def _close_on(stopping: asyncio.Event, hub: EventHub) -> None:
    await stopping.wait()
    hub.close()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail, headers=dict(exc.headers or {}))


async def _input_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InputError)
    return error_response(exc.status, exc.message, exc.fields)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error; the gateway logged the details")
