"""What happens around every HTTP request: request id, API key, header and body limits, metrics,
access log.

A plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``):
that one copies every response through an extra task and memory stream, which cost 0.8 ms per
request on the benchmark machine, a tenth of the service's whole overhead on a small index.
It also catches an unexpected exception before Starlette's last-resort handler would (which
answers outside every middleware), so a 500 still gets the error envelope, the ``x-request-id``
that ties it to the logged traceback and, when configured, the CORS headers. It sits inside
CORS so that browser preflights, which carry no API key, are answered before the key check.

The body limit is counted while the body streams, so a ``Transfer-Encoding: chunked`` body (no
``Content-Length``) is refused with a 413 the moment it passes the limit instead of being read
in full; a client that stops sending in the middle of a body gets a 408 after
``body_timeout_s``. A client's ``X-Request-Id`` is kept only when it is a short token
(:data:`REQUEST_ID_PATTERN`); anything else is replaced by a generated id, so no header text
reaches the log or a response unchecked.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ServiceError, envelope, internal_error
from .metrics import ServiceMetrics
from .security import ANONYMOUS_TENANT, check_api_key
from .settings import ServiceSettings

logger = logging.getLogger(__name__)

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""A client-supplied ``X-Request-Id`` is used only when it matches this in full."""


class BodyLimitError(HTTPException):
    """Raised from ``receive`` when the body passes the limit (413) or stalls (408).

    An ``HTTPException`` so that FastAPI's body parsing lets it through unchanged (it turns any
    other exception into a 400) and the error handlers render it as the envelope.
    """

    def __init__(self, status: int, message: str, code: str):
        super().__init__(status, message, headers={"Connection": "close"})
        self.code = code


def request_id_from(header: str | None) -> str:
    """The client's id when it is a well-formed token, otherwise a new one."""
    if header is not None and REQUEST_ID_PATTERN.fullmatch(header):
        return header
    return f"req_{uuid.uuid4().hex[:20]}"


def body_limit(settings: ServiceSettings, path: str) -> int:
    """Largest body, in bytes, accepted on ``path``."""
    return (
        settings.max_batch_body_bytes
        if path.rstrip("/") == "/v1/batches"
        else settings.max_body_bytes
    )


class RequestContext:
    """ASGI middleware: ``x-request-id`` on every response, auth, header and body limits, one log
    line."""

    def __init__(self, app: ASGIApp, settings: ServiceSettings, metrics: ServiceMetrics):
        self.app = app
        self.settings = settings
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # a view: its .state is scope["state"], which the routes share
        request_id = request_id_from(request.headers.get("x-request-id"))
        request.state.request_id = request_id
        request.state.tenant = ANONYMOUS_TENANT
        t0 = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("ascii")),
                ]
            await send(message)

        try:
            rejection = self._reject(request)
            if rejection is not None:
                await rejection(scope, receive, send_with_id)
            else:
                await self.app(
                    scope,
                    self._limited(receive, body_limit(self.settings, request.url.path)),
                    send_with_id,
                )
        except (
            BodyLimitError
        ) as exc:  # raised where nothing caught it (a route reading the stream itself)
            if started:
                raise
            await envelope(
                exc.status_code,
                exc.detail,
                "invalid_request_error",
                code=exc.code,
                headers=dict(exc.headers or {}),
            )(scope, receive, send_with_id)
        except Exception:
            logger.exception("request %s failed", request_id)
            if started:  # the response is half sent; nothing left to do but close the connection
                raise
            await internal_error(request_id)(scope, receive, send_with_id)
        self._record(request, scope, status, time.perf_counter() - t0)

    def _limited(self, receive: Receive, limit: int) -> Receive:
        """``receive`` that counts body bytes and waits at most ``body_timeout_s`` for each
        chunk."""
        received = 0
        timeout = self.settings.body_timeout_s

        async def limited_receive() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                raise BodyLimitError(
                    408,
                    f"the request body stalled for more than {timeout:g} s; fix: send the "
                    "body without pauses",
                    "body_timeout",
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyLimitError(
                        413,
                        f"the request body passed this server's limit of {limit} bytes; fix: send "
                        "less (split a batch into several)",
                        "body_too_large",
                    )
            return message

        return limited_receive

    def _reject(self, request: Request) -> JSONResponse | None:
        """The error response for a request refused before routing (headers too large, bad key,
        declared body too large), or None."""
        try:
            header_bytes = sum(len(k) + len(v) + 4 for k, v in request.scope["headers"])
            if header_bytes > self.settings.max_header_bytes:
                raise ServiceError(
                    431,
                    f"the request headers are {header_bytes} bytes, over this server's limit of "
                    f"{self.settings.max_header_bytes}; fix: send shorter headers",
                    code="headers_too_large",
                )
            request.state.tenant = check_api_key(request, self.settings.api_keys)
            length = request.headers.get("content-length")
            limit = body_limit(self.settings, request.url.path)
            if length is not None and length.isdigit() and int(length) > limit:
                raise ServiceError(
                    413,
                    f"request body of {int(length)} bytes is over this server's limit of {limit}; "
                    "fix: send less (split a batch into several)",
                    code="body_too_large",
                    headers={"Connection": "close"},
                )
        except ServiceError as exc:
            return envelope(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)
        return None

    def _record(self, request: Request, scope: Scope, status: int, elapsed: float) -> None:
        path = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.requests.labels(path, request.method, str(status)).inc()
        self.metrics.latency.labels(path).observe(elapsed)
        extra = getattr(request.state, "log_extra", "")
        # the route template, never the raw path: a client-chosen path must not shape the log line
        logger.info(
            "%s %s %s %d %.1fms%s",
            request.state.request_id,
            request.method,
            path,
            status,
            elapsed * 1000,
            extra,
        )
