"""Bearer API keys: constant-time comparison, keys never logged; health endpoints stay open."""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import ServiceError

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/", "/docs", "/openapi.json", "/favicon.ico"})


ADMIN_PREFIX = "/v1/admin/"
"""Admin routes take admin keys (:func:`check_admin_key`), never the API keys."""


def check_api_key(request: Request, keys: list[str]) -> None:
    """Raise a 401 unless the request carries one of ``keys`` (no-op when ``keys`` is empty)."""
    path = request.url.path
    if not keys or path in OPEN_PATHS or path.startswith("/static/") or path.startswith(ADMIN_PREFIX):
        return
    _check_bearer(request, keys)


def check_admin_key(request: Request, admin_keys: list[str]) -> None:
    """Admin routes: a 403 when no admin key is configured, a 401 unless the request carries one."""
    if not admin_keys:
        raise ServiceError(403, "admin routes are disabled on this server; fix: start it with TRIBUTARY_ADMIN_KEYS=<key> "
                           "(or restart it to load a changed index)", code="admin_disabled")
    _check_bearer(request, admin_keys)


def _check_bearer(request: Request, keys: list[str]) -> None:
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
