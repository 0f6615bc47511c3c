"""JSON answers written with orjson, the one shape every error takes, and the dashboard's HTML
answers, each with its Content-Security-Policy."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import HTMLResponse, Response

from services.gateway.models import ErrorBody, FieldError


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, BaseModel):
            content = content.model_dump(mode="json", by_alias=True, exclude_none=False)
        return orjson.dumps(content)


def model_response(
    model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None
) -> ORJSONResponse:
    return ORJSONResponse(model, status_code=status_code, headers=headers)


def error_response(
    status_code: int,
    message: str,
    fields: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> ORJSONResponse:
    body = ErrorBody(error=message, fields=fields).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    return ORJSONResponse(body, status_code=status_code, headers=headers)


# The pages load scripts and styles from /static only: no inline script, handler or `javascript:`
# URL runs, so markup that slipped past escaping stays inert. Style attributes are allowed (the
# server sets progress bars' widths with them; no style attribute runs code); `<style>` is not.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'; object-src 'none'"
)
HTML_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def html_response(content: str, status_code: int = 200) -> HTMLResponse:
    """Every HTML page and fragment the gateway sends goes through here."""
    return HTMLResponse(content, status_code=status_code, headers=HTML_HEADERS)
