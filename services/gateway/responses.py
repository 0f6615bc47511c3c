"""JSON answers written with orjson, and the one shape every error takes."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import Response

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
