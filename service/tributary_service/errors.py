"""The one error envelope: ``{"error": {"message", "type", "param", "code"}}`` on every failure.

Modelled on the OpenAI / vLLM protocol: a 4xx always says what to fix; a 500 never leaks
internals (the request id in the message and the log line ties them together).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from tributary_client.types import ErrorBody, ErrorResponse

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    503: "unavailable_error",
}


class ServiceError(Exception):
    """An error with its HTTP status and envelope fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error")
        self.param = param
        self.code = code
        self.headers = headers or {}


def envelope(
    status: int,
    message: str,
    type: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def internal_error(request_id: str) -> JSONResponse:
    """The 500 for an unexpected failure: no internals, only the id that finds it in the log."""
    return envelope(
        500,
        f"internal server error (request id {request_id}); the server log has the details",
        "server_error",
    )


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) if parts else "body"


def describe_errors(errors: Sequence[Any], prefix: str = "") -> tuple[str, str | None]:
    """pydantic's errors as ``"field: what is wrong; ..."`` and the first field: the short messages
    only (no input echo, no documentation links)."""
    if not errors:
        return "invalid request", None
    parts = []
    for err in errors[:5]:
        where = prefix + _loc(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more, prefix + _loc(tuple(errors[0].get("loc", ())))


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure through :func:`envelope`."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return envelope(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_errors(exc.errors())
        return envelope(
            400,
            message + "; fix the request body (see GET /docs for the schema)",
            "invalid_request_error",
            param,
            "invalid_request",
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        message = str(exc.detail)
        path = request.url.path if len(request.url.path) <= 200 else request.url.path[:200] + "…"
        if status == 404 and message == "Not Found":
            message = f"no route {request.method} {path}; see GET /docs for the API"
        headers = dict(getattr(exc, "headers", None) or {})
        if status == 405:
            allowed = _allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            message = (
                f"{request.method} is not allowed on {path}; allowed: {', '.join(allowed)} (see "
                "GET /docs)"
            )
        return envelope(
            status,
            message,
            _TYPE_BY_STATUS.get(status, "server_error"),
            code=getattr(exc, "code", None),
            headers=headers or None,
        )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on the request's path (the ``Allow`` of a 405)."""
    methods: set[str] = set()
    for route in request.app.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(request.url.path):
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)
