"""Bearer API keys: constant-time comparison, keys never logged; health endpoints stay open."""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import ServiceError

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/", "/docs", "/openapi.json", "/favicon.ico"})


def check_api_key(request: Request, keys: list[str]) -> None:
    """Raise a 401 unless the request carries one of ``keys`` (no-op when ``keys`` is empty)."""
    if not keys or request.url.path in OPEN_PATHS or request.url.path.startswith("/static/"):
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ServiceError(401, "missing API key; fix: send the header 'Authorization: Bearer <key>'",
                           code="missing_api_key", headers={"WWW-Authenticate": "Bearer"})
    supplied = token.strip().encode()
    matched = False
    for key in keys:  # every key is compared, so timing does not reveal which one came close
        matched |= hmac.compare_digest(supplied, key.encode())
    if not matched:
        raise ServiceError(401, "invalid API key; fix: use a key this server was configured with",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
