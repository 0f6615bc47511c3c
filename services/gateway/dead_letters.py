"""The namespace's dead letters, for operators: the JSON routes and the dashboard's pages over
them. What a browse and a re-drive do on the broker is `relayflow.amqp.dead_letters` (the CLI's
too): a look consumes nothing, a re-driven letter is acked only once its copy is confirmed.

GET  /dead-letters?offset=&limit=     a page of them, in queue order            (read)
GET  /dead-letters/{messageId}        one whole: headers and body               (read)
POST /dead-letters/redrive            {"messageIds": [...]} or {"all": true}    (redrive)
GET  /ui/dead-letters                 the list page, with re-drive buttons
GET  /ui/dead-letters/{messageId}     one dead letter's page

The queue holds any tenant's messages, so these answer only callers who see the whole namespace
(`state.sees_namespace`: open mode, or the default tenant's keys); another tenant's key gets 403.
The gateway's broker user needs read on `<ns>.dead-letters` (`relayflow broker setup` gives it);
a broker that refuses it is a 503 that says so, on the pages too.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import UTC, datetime

import aiormq
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from relayflow.amqp import dead_letters as broker
from relayflow.amqp.dead_letters import DeadLetter, DeadLetterMessage, NoSuchDeadLetter
from relayflow.auth import Action
from services.gateway import checks, operator_html
from services.gateway.checks import InputError
from services.gateway.intake import field_errors
from services.gateway.models import (
    DeadLetterDetail,
    DeadLetterPage,
    DeadLetterView,
    Redriven,
    RedriveRequest,
)
from services.gateway.responses import error_response, html_response, model_response
from services.gateway.sessions import page_chrome
from services.gateway.state import GatewayState, gateway_state, may, sees_namespace

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# A message id in a path: what AMQP's shortstr holds.
MAX_MESSAGE_ID = 255
NOT_THE_NAMESPACE = (
    "dead letters belong to the whole namespace (any tenant's messages): only a key of the "
    "default tenant sees them"
)


class BrokerRefused(Exception):
    """The broker refused the gateway's user the dead-letter queue."""


def refused_message(state: GatewayState) -> str:
    queue = state.topology.dead_letter_queue
    return (
        f"the broker refuses the gateway's user the dead-letter queue {queue}: give it read on "
        "that queue (the definitions of `relayflow broker setup` do; load them again), or use "
        "`relayflow dead-letters` with the admin user"
    )


def view_of(letter: DeadLetter) -> DeadLetterView:
    at = None
    if letter.dead_lettered_at:
        try:
            at = datetime.fromisoformat(letter.dead_lettered_at)
        except ValueError:
            at = None
    fields = asdict(letter)
    fields["dead_lettered_at"] = at
    return DeadLetterView(**fields)


def detail_of(message: DeadLetterMessage) -> DeadLetterDetail:
    return DeadLetterDetail(
        **view_of(message.letter).model_dump(),
        content_type=message.content_type,
        correlation_id=message.correlation_id,
        headers=broker.jsonable(message.headers),
        body=message.body_json(),
    )


def _window(request: Request) -> tuple[int, int]:
    """`offset` and `limit` from the query (422 if either is not a number in range)."""

    def number(name: str, default: int, low: int, high: int) -> int:
        raw = request.query_params.get(name, "").strip()
        if not raw:
            return default
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise InputError(422, f"{name} is a whole number from {low} to {high}")
        return int(raw)

    return (
        number("offset", 0, 0, broker.MAX_BROWSE),
        number("limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
    )


def _message_id(raw: str) -> str:
    if not raw or len(raw) > MAX_MESSAGE_ID:
        raise InputError(400, f"a message id is 1 to {MAX_MESSAGE_ID} characters")
    return raw


async def _page(state: GatewayState, offset: int, limit: int) -> DeadLetterPage:
    try:
        async with state.dead_letters:
            browsed = await broker.browse(
                state.connection, state.topology, limit=limit, offset=offset
            )
    except aiormq.exceptions.ChannelAccessRefused as exc:
        log.warning("the broker refused the dead-letter queue: %s", exc)
        raise BrokerRefused from None
    following = offset + len(browsed.letters)
    return DeadLetterPage(
        queue=state.topology.dead_letter_queue,
        offset=offset,
        limit=limit,
        seen=browsed.seen,
        items=[view_of(letter) for letter in browsed.letters],
        next=following if following < browsed.seen else None,
    )


async def _one(state: GatewayState, message_id: str) -> DeadLetterMessage | None:
    try:
        async with state.dead_letters:
            return await broker.show_dead_letter(state.connection, state.topology, message_id)
    except NoSuchDeadLetter:
        return None
    except aiormq.exceptions.ChannelAccessRefused as exc:
        log.warning("the broker refused the dead-letter queue: %s", exc)
        raise BrokerRefused from None


def _refusal(request: Request) -> Response | None:
    if not sees_namespace(request):
        return error_response(403, NOT_THE_NAMESPACE)
    return None


# ---- JSON -----------------------------------------------------------------------------------


async def list_dead_letters(request: Request) -> Response:
    if (refused := _refusal(request)) is not None:
        return refused
    state = gateway_state(request)
    offset, limit = _window(request)
    try:
        page = await _page(state, offset, limit)
    except BrokerRefused:
        return error_response(503, refused_message(state))
    return model_response(page)


async def get_dead_letter(request: Request) -> Response:
    if (refused := _refusal(request)) is not None:
        return refused
    state = gateway_state(request)
    message_id = _message_id(request.path_params["message_id"])
    try:
        found = await _one(state, message_id)
    except BrokerRefused:
        return error_response(503, refused_message(state))
    if found is None:
        return error_response(404, f"no dead letter with message id {checks.shown(message_id)}")
    return model_response(detail_of(found))


async def redrive_dead_letters(request: Request) -> Response:
    """Send the named dead letters (or all) back where they came from: 200 with those the broker
    confirmed; 404 when a named id matches none (the others named are sent all the same)."""
    if (refused := _refusal(request)) is not None:
        return refused
    state = gateway_state(request)
    checks.require_json(request)
    data = await state.limits.read_json(
        request, expected='{"messageIds": ["<message id>", ...]} or {"all": true}'
    )
    try:
        body = RedriveRequest.model_validate(data)
    except ValidationError as exc:
        raise InputError(
            422, 'send {"messageIds": [...]} or {"all": true}', field_errors(exc)
        ) from None
    try:
        async with state.dead_letters:
            sent = await broker.redrive(
                state.connection, state.topology, message_ids=body.message_ids
            )
    except NoSuchDeadLetter as exc:
        return error_response(404, str(exc))
    except aiormq.exceptions.ChannelAccessRefused as exc:
        log.warning("the broker refused the dead-letter queue: %s", exc)
        return error_response(503, refused_message(state))
    for letter in sent:
        log.info(
            "re-drove dead letter %s to %s/%s",
            letter.message_id,
            letter.exchange,
            letter.routing_key,
        )
    return model_response(Redriven(redriven=[view_of(letter) for letter in sent]))


# ---- pages ----------------------------------------------------------------------------------


async def dead_letters_page(request: Request) -> Response:
    state = gateway_state(request)
    chrome = page_chrome(request)
    if not sees_namespace(request):
        return html_response(operator_html.refused_page(NOT_THE_NAMESPACE, chrome=chrome), 403)
    try:
        offset, limit = _window(request)
    except InputError as exc:
        return html_response(operator_html.refused_page(exc.message, chrome=chrome), exc.status)
    try:
        page = await _page(state, offset, limit)
    except BrokerRefused:
        return html_response(operator_html.refused_page(refused_message(state), chrome=chrome), 503)
    content = operator_html.dead_letters_page(
        page, datetime.now(UTC), may_redrive=may(request, Action.REDRIVE), chrome=chrome
    )
    return html_response(content)


async def dead_letter_page(request: Request) -> Response:
    state = gateway_state(request)
    chrome = page_chrome(request)
    if not sees_namespace(request):
        return html_response(operator_html.refused_page(NOT_THE_NAMESPACE, chrome=chrome), 403)
    try:
        message_id = _message_id(request.path_params["message_id"])
        found = await _one(state, message_id)
    except InputError as exc:
        return html_response(operator_html.refused_page(exc.message, chrome=chrome), exc.status)
    except BrokerRefused:
        return html_response(operator_html.refused_page(refused_message(state), chrome=chrome), 503)
    if found is None:
        return html_response(operator_html.missing_dead_letter_page(message_id, chrome=chrome), 404)
    content = operator_html.dead_letter_page(
        detail_of(found), datetime.now(UTC), may_redrive=may(request, Action.REDRIVE), chrome=chrome
    )
    return html_response(content)
