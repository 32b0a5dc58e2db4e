"""Exceptions raised by the Tributary client.

Hierarchy::

    TributaryError
    ├── RequestValidationError         the input was refused before anything was sent
    └── APIError                       anything that went wrong talking to the API
        ├── APIConnectionError         no HTTP response (DNS, refused, reset, ...)
        │   └── APITimeoutError
        ├── APIResponseValidationError a 2xx whose body does not match the wire types
        ├── BadRequestError            400 / 422 / type invalid_request_error
        ├── AuthenticationError        401 / 403 / type authentication_error
        ├── NotFoundError              404 / type not_found_error
        ├── RateLimitError             429 / type rate_limit_error
        └── InternalServerError        >= 500 / type server_error
            └── UnavailableError       503 / type unavailable_error

The class is chosen from the error envelope's ``type`` first (the server's statement of
what went wrong), then from the HTTP status.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx

logger = logging.getLogger(__name__)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "InternalServerError",
    "NotFoundError",
    "RateLimitError",
    "RequestValidationError",
    "TributaryError",
    "UnavailableError",
    "make_status_error",
]


class TributaryError(Exception):
    """Base class of every exception raised by this package."""


class RequestValidationError(TributaryError, ValueError):
    """The SDK refused an argument before sending anything; the message says what to fix.

    `errors` lists each problem as ``{"param": "top_k", "message": "..."}`` (``param`` is the
    request field at fault, dotted for nested fields, or None); `param` is the first one's.
    Also a `ValueError`, so code written against the plain Python convention catches it.
    """

    message: str
    param: str | None
    errors: list[dict[str, Any]]

    def __init__(
        self, message: str, *, param: str | None = None, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.errors = errors if errors is not None else [{"param": param, "message": message}]

    @classmethod
    def from_pydantic(cls, exc: Any, *, prefix: str = "invalid request") -> RequestValidationError:
        """Wrap a pydantic ``ValidationError`` (its problems, each with the field at fault)."""
        errors: list[dict[str, Any]] = []
        texts: list[str] = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            errors.append({"param": loc or None, "message": msg})
            texts.append(f"{loc}: {msg}" if loc else msg)
        text = "; ".join(texts)
        return cls(
            f"{prefix}: {text}" if prefix else text,
            param=errors[0]["param"] if errors else None,
            errors=errors,
        )


class APIError(TributaryError):
    """An API call failed; the attributes carry what the server said, when it said anything."""

    message: str
    request_id: str | None
    status_code: int | None
    type: str | None
    param: str | None
    code: str | None
    body: Any

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        status_code: int | None = None,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.status_code = status_code
        self.type = type
        self.param = param
        self.code = code
        self.body = body

    def __str__(self) -> str:
        parts = [self.message]
        if self.status_code is not None:
            parts.append(f"status {self.status_code}")
        if self.param:
            parts.append(f"param {self.param}")
        if self.request_id:
            parts.append(f"request id {self.request_id}")
        if len(parts) == 1:
            return self.message
        return f"{self.message} ({', '.join(parts[1:])})"


class APIConnectionError(APIError):
    """The request did not get an HTTP response (connection refused, reset, DNS...)."""

    def __init__(self, message: str = "connection error", *, request_id: str | None = None) -> None:
        super().__init__(message, request_id=request_id)


class APITimeoutError(APIConnectionError):
    """The request timed out (connect, read, write or pool timeout)."""

    def __init__(
        self, message: str = "request timed out", *, request_id: str | None = None
    ) -> None:
        super().__init__(message, request_id=request_id)


class APIResponseValidationError(APIError):
    """The server answered 2xx but the body is not what the wire contract says."""


class BadRequestError(APIError):
    """The request is invalid (400/422): the message says what to fix."""


class AuthenticationError(APIError):
    """Missing or wrong API key (401) or not allowed (403)."""


class NotFoundError(APIError):
    """The example, batch or route does not exist (404)."""


class RateLimitError(APIError):
    """Too many requests (429); retried automatically before this is raised."""


class InternalServerError(APIError):
    """The server failed (>= 500); retried automatically before this is raised."""


class UnavailableError(InternalServerError):
    """The server is not ready or overloaded (503); retried automatically first."""


_BY_TYPE: dict[str, type[APIError]] = {
    "invalid_request_error": BadRequestError,
    "authentication_error": AuthenticationError,
    "not_found_error": NotFoundError,
    "rate_limit_error": RateLimitError,
    "unavailable_error": UnavailableError,
    "server_error": InternalServerError,
}


def _class_for(error_type: str | None, status: int) -> type[APIError]:
    if error_type and error_type in _BY_TYPE:
        return _BY_TYPE[error_type]
    if status in (400, 422):
        return BadRequestError
    if status in (401, 403):
        return AuthenticationError
    if status == 404:
        return NotFoundError
    if status == 429:
        return RateLimitError
    if status == 503:
        return UnavailableError
    if status >= 500:
        return InternalServerError
    return APIError


def _message_from_detail(detail: Any) -> str:
    """Render FastAPI's default ``{"detail": ...}`` bodies (validation errors) readably."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        items = []
        for d in detail:
            if isinstance(d, dict):
                loc = ".".join(str(p) for p in d.get("loc", ()) if p != "body")
                msg = str(d.get("msg", "")).removeprefix("Value error, ")
                items.append(f"{loc}: {msg}" if loc else msg)
            else:
                items.append(str(d))
        return "; ".join(items)
    return json.dumps(detail)


def make_status_error(response: httpx.Response) -> APIError:
    """Build the exception for a non-2xx response (the body must have been read)."""
    status = response.status_code
    request_id = response.headers.get("x-request-id")
    body: Any
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = response.text
    error_type = param = code = None
    message = ""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        message = str(err.get("message") or "")
        error_type = err.get("type") if isinstance(err.get("type"), str) else None
        param = err.get("param") if isinstance(err.get("param"), str) else None
        code = err.get("code") if isinstance(err.get("code"), str) else None
    elif isinstance(body, dict) and "detail" in body:
        message = _message_from_detail(body["detail"])
    elif isinstance(body, str) and body.strip():
        message = body.strip()[:300]
    if not message:
        message = f"HTTP {status} {response.reason_phrase}".strip()
    cls = _class_for(error_type, status)
    return cls(
        message,
        request_id=request_id,
        status_code=status,
        type=error_type,
        param=param,
        code=code,
        body=body,
    )
