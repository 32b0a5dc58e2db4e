"""Bearer API keys: constant-time comparison, keys never logged or stored.

The rule with keys configured: **every path under ``/v1/`` needs a key; nothing else does.**
Open are the health probes (``/healthz``, ``/readyz``), ``/metrics`` (Prometheus scrapes it
without a key; it holds counters, never request content), the chat page and its static files,
and the API documentation (``/docs``, ``/redoc``, ``/openapi.json``), none of which holds data.
The admin routes (``/v1/admin/``) take admin keys instead (``TRIBUTARY_ADMIN_KEYS``).

A request's *tenant* is a fingerprint of the key it carried (:func:`key_fingerprint`), never the
key itself: batch jobs belong to it, and idempotency keys are scoped to it.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from .errors import ServiceError

ANONYMOUS_TENANT = "anonymous"
"""The tenant of every request when the server has no keys."""

PROTECTED_PREFIX = "/v1/"


ADMIN_PREFIX = "/v1/admin/"
"""Admin routes take admin keys (:func:`check_admin_key`), never the API keys."""


def key_fingerprint(key: str) -> str:
    """A stable, non-reversible name for an API key (what batch jobs record as their owner)."""
    return "key_" + hashlib.sha256(b"tributary-tenant\x00" + key.encode()).hexdigest()[:24]


def is_protected(path: str) -> bool:
    """True for the paths that need an API key when keys are configured (admin routes take admin
    keys)."""
    return (
        path.startswith(PROTECTED_PREFIX) or path == PROTECTED_PREFIX.rstrip("/")
    ) and not path.startswith(ADMIN_PREFIX)


def check_api_key(request: Request, keys: list[str]) -> str:
    """The request's tenant; a 401 unless it carries one of ``keys`` (anonymous when ``keys`` is
    empty or the path is open)."""
    if not keys or not is_protected(request.url.path):
        return ANONYMOUS_TENANT
    return key_fingerprint(_check_bearer(request, keys))


def check_admin_key(request: Request, admin_keys: list[str]) -> None:
    """Admin routes: a 403 when no admin key is configured, a 401 unless the request carries one."""
    if not admin_keys:
        raise ServiceError(
            403,
            "admin routes are disabled on this server; fix: start it with "
            "TRIBUTARY_ADMIN_KEYS=<key> (or restart it to load a changed index)",
            code="admin_disabled",
        )
    _check_bearer(request, admin_keys)


def _check_bearer(request: Request, keys: list[str]) -> str:
    """The key the request carries, one of ``keys``; a 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ServiceError(
            401,
            "missing API key; fix: send the header 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    supplied = token.strip().encode()
    matched: str | None = None
    for key in keys:  # every key is compared, so timing does not reveal which one came close
        if hmac.compare_digest(supplied, key.encode()):
            matched = key
    if matched is None:
        raise ServiceError(
            401,
            "invalid API key; fix: use a key this server was configured with",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return matched
