"""The gateway's HTTP API as the CLI uses it (`schemas/openapi.json`): one client per command,
the API key as `Authorization: Bearer`, and every refusal turned into a `CliError` that shows
the gateway's own `error` (and the fields at fault)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from relayflow.cli.context import API_KEY_ENV, URL_ENV, Context
from relayflow.cli.errors import CliError

# One request (not a stream: those read as long as the workflow runs) may take this long.
REQUEST_TIMEOUT = 30.0
IDEMPOTENCY_HEADER = "Idempotency-Key"
SENDER_HEADER = "X-Relayflow-Sender"
# The largest page `GET /workflows` serves (its `limit`); longer lists are read page by page.
MAX_PAGE = 200


class GatewayError(CliError):
    """The gateway answered with an error status; `status` is it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def path(*parts: str) -> str:
    """A URL path from its segments, each quoted (an id is checked by the gateway, not here)."""
    return "/" + "/".join(quote(part, safe="") for part in parts)


@contextlib.asynccontextmanager
async def client(context: Context) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Accept": "application/json", "User-Agent": "relayflow-cli"}
    if context.api_key:
        headers["Authorization"] = f"Bearer {context.api_key}"
    async with httpx.AsyncClient(
        base_url=context.url, headers=headers, timeout=REQUEST_TIMEOUT, transport=context.transport
    ) as http:
        yield http


def unreachable(context: Context, exc: Exception) -> CliError:
    return CliError(
        f"cannot reach the gateway at {context.url} ({exc or type(exc).__name__}); is it "
        f"running, and is {URL_ENV} its address?"
    )


def refusal(response: httpx.Response, what: str) -> GatewayError:
    """The error the gateway answered, as one message: its `error`, then each field at fault,
    and what to do about a missing or refused key."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping) and isinstance(body.get("error"), str):
        message = body["error"]
        fields = body.get("fields") or []
        details = [
            f"{'.'.join(str(part) for part in field.get('loc', [])) or '(the body)'}: "
            f"{field.get('message', '')}"
            for field in fields
            if isinstance(field, Mapping)
        ]
        if details:
            message += "\n  " + "\n  ".join(details)
    else:
        message = response.text.strip()[:500] or response.reason_phrase
    if status == 401:
        message += f" (set {API_KEY_ENV} to an API key)"
    elif status == 403:
        message += f" (the key in {API_KEY_ENV} has a role that may not do this)"
    return GatewayError(f"{what}: {status} {message}", status)


async def call(
    http: httpx.AsyncClient,
    context: Context,
    method: str,
    url: str,
    *,
    what: str,
    json: Any = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """The JSON body of a successful answer; `GatewayError` for any other, `CliError` when the
    gateway cannot be reached."""
    try:
        response = await http.request(method, url, json=json, params=params, headers=headers)
    except httpx.TransportError as exc:
        raise unreachable(context, exc) from exc
    if response.status_code >= 300:
        raise refusal(response, what)
    try:
        return response.json()
    except ValueError as exc:
        raise CliError(f"{what}: the gateway's answer is not JSON ({exc})") from exc
