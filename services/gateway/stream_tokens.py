"""Stream tokens: short-lived signed tokens that open one event stream, for clients that cannot
send headers (a browser's `EventSource`, on the dashboard or on another site's page).

`POST /stream-tokens` with `{"workflowId": …}` or `{"list": true}`, by any credential that may
stream (Bearer or the dashboard's cookie), answers a token valid for
`RELAYFLOW_STREAM_TOKEN_SECONDS` (5 minutes by default) on `GET /workflows/{id}/events` of that
workflow, or on `GET /events`, as `?token=`. It is signed under a key of its own derived from
`RELAYFLOW_AUTH_SECRET` (`relayflow.auth.signed`) and carries the key's id, the scope and the
expiry; `access` refuses it (401, before anything is looked up, so that a token for another
workflow says nothing of whether this one exists) when it is forged, expired or for another
stream, and checks the key it names on every use, so that no token outlives its key. A token
minted by a person's OIDC token carries that caller instead (`services.gateway.carried`) and
expires with it at the latest. A token is a credential in a URL: access logs show
`token=<redacted>` (`RedactTokens`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import SecretStr, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from relayflow.auth import Signer
from relayflow.auth.signed import Clock
from services.gateway import carried, checks
from services.gateway.checks import InputError
from services.gateway.intake import field_errors
from services.gateway.models import StreamToken, StreamTokenRequest
from services.gateway.responses import error_response, model_response
from services.gateway.state import Caller, caller_of, gateway_state

log = logging.getLogger(__name__)

QUERY = "token"
# Far above any token minted here (a few hundred characters); longer is no token at all.
MAX_LENGTH = 1024
LIST_SCOPE = "list"
# Credentials that travel in a URL: stream tokens, and the OIDC sign-in's authorization code and
# state on its callback (services.gateway.oidc_signin).
_IN_URL = re.compile(r"([?&](?:token|code|state)=)[^&\s\"]*")


def workflow_scope(workflow_id: str) -> str:
    return f"workflow:{workflow_id}"


def scope_of(request: Request) -> str:
    """The scope a stream token must have to open this request's stream."""
    workflow_id = request.path_params.get("workflow_id")
    return LIST_SCOPE if workflow_id is None else workflow_scope(str(workflow_id))


@dataclass(frozen=True, slots=True)
class StreamTokens:
    signer: Signer
    lifetime: int

    @classmethod
    def from_secret(cls, secret: SecretStr, lifetime: int, clock: Clock) -> StreamTokens:
        return cls(Signer.from_secret(secret, "stream-token/v1", clock), lifetime)

    def mint(self, holder: str | Caller, scope: str) -> tuple[str, int]:
        """A token for `scope` standing for `holder`: a key's id, or a caller, carried by id
        too unless its credential expires by itself (then by value, and no later than it)."""
        caller = holder if isinstance(holder, Caller) and holder.expires is not None else None
        if caller is None:
            key_id = holder.id if isinstance(holder, Caller) else holder
            return self.signer.sign({"k": key_id, "s": scope}, self.lifetime)
        lifetime = carried.lifetime(self.lifetime, caller, self.signer.clock())
        return self.signer.sign({**carried.claims_of(caller), "s": scope}, lifetime)

    def holder(self, token: str, scope: str) -> str | Caller | None:
        """Who `token` stands for, if it is valid for `scope`: the id of the key it was made
        with (to be checked again), or the caller it carries; else None."""
        claims = self.signer.verify(token)
        if claims is None or claims.get("s") != scope:
            return None
        key_id = claims.get("k")
        return key_id if isinstance(key_id, str) else carried.caller_in(claims)


async def mint_stream_token(request: Request) -> Response:
    """`POST /stream-tokens`: the caller's credentials were checked by `access` (it may stream);
    the workflow need not exist yet (a page opened right after a start follows it early)."""
    state = gateway_state(request)
    checks.require_json(request)
    tokens = state.access.streams
    caller = caller_of(request)
    if tokens is None or caller is None:
        return error_response(
            409, f"authentication is off ({state.access.why}): streams need no token"
        )
    data = await state.limits.read_json(request, expected='{"workflowId": …} or {"list": true}')
    try:
        wanted = StreamTokenRequest.model_validate(data)
    except ValidationError as exc:
        raise InputError(
            422, 'send {"workflowId": "<id>"} or {"list": true}', field_errors(exc)
        ) from None
    scope = LIST_SCOPE if wanted.workflow_id is None else workflow_scope(wanted.workflow_id)
    token, expires = tokens.mint(caller, scope)
    log.debug("made a stream token for %s for %s", scope, caller.id)
    answer = StreamToken(token=token, expires_at=datetime.fromtimestamp(expires, UTC))
    return model_response(answer, headers={"Cache-Control": "no-store"})


class RedactTokens(logging.Filter):
    """Hides `token=…` (and the OIDC callback's `code=…`, `state=…`) in the request lines of
    uvicorn's access log (its arguments hold the path with its query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(arg, str) and _IN_URL.search(arg) for arg in record.args
        ):
            record.args = tuple(
                _IN_URL.sub(r"\1<redacted>", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True
