"""Every error of the API as ``application/problem+json`` (RFC 9457): ``type``, ``title``,
``status``, ``detail``, and ``errors`` (one per bad field) for a 422. Errors are translated
here, at one boundary; routes raise :class:`Problem` or let FastAPI raise its own."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("gridshare.api")

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:gridshare:problem:"


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: body, query or path, then the field.")
    msg: str
    type: str


class ProblemDetails(BaseModel):
    """An error, as RFC 9457 describes it."""

    type: str = Field(description="A URN naming the kind of problem.",
                      examples=["urn:gridshare:problem:unauthorized"])
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = Field(
        default=None, description="422 only: every problem with the request, one per field.")


class Problem(Exception):
    """Raised by a route: the answer is this problem, and nothing was changed."""

    def __init__(self, status: int, detail: str, *, kind: str | None = None,
                 headers: dict[str, str] | None = None,
                 errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or _slug(status)
        self.headers = headers
        self.errors = errors


def _slug(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")
    except ValueError:
        return "error"


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(status: int, detail: str, *, kind: str | None = None,
                     errors: list[dict[str, Any]] | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": TYPE_PREFIX + (kind or _slug(status)),
                            "title": _title(status), "status": status, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entry of routes that may answer with these problems."""
    descriptions = {401: "No valid bearer token.", 403: "No API token is configured.",
                    404: "Unknown id.", 422: "The request is not valid; nothing changed.",
                    503: "Not available in this configuration."}
    return {code: {"model": ProblemDetails, "description": descriptions.get(code, _title(code)),
                   "content": {PROBLEM_JSON: {"schema": {
                       "$ref": "#/components/schemas/ProblemDetails"}}}}
            for code in codes}


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        out.append({"loc": [p if isinstance(p, int) else str(p) for p in err.get("loc", ())],
                    "msg": msg, "type": str(err.get("type", ""))})
    return jsonable_encoder(out)  # type: ignore[no-any-return]


def install(api: FastAPI) -> None:
    """Answer every error of ``api`` as problem+json."""

    async def on_problem(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(exc.status, exc.detail, kind=exc.kind, headers=exc.headers,
                                errors=exc.errors)

    async def on_http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return problem_response(exc.status_code, detail,
                                headers=dict(exc.headers) if exc.headers else None)

    async def on_validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = _field_errors(exc)
        first = errors[0] if errors else None
        where = ".".join(str(p) for p in first["loc"]) if first else ""
        detail = f"{where}: {first['msg']}" if first else "the request is not valid"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        return problem_response(422, detail, kind="validation-error", errors=errors)

    async def on_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("API request failed", exc_info=exc)
        return problem_response(500, "internal error (logged by gridshare)")

    api.add_exception_handler(Problem, on_problem)
    api.add_exception_handler(StarletteHTTPException, on_http)
    api.add_exception_handler(RequestValidationError, on_validation)
    api.add_exception_handler(Exception, on_error)
