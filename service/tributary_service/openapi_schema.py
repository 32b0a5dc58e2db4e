"""The OpenAPI document, completed so that it states what this server enforces.

FastAPI derives most of it from the routes and the wire types; this adds what only the running
configuration knows: the ``top_k`` maximum (``TRIBUTARY_MAX_TOP_K``), the body schema of
``POST /v1/batches`` (whose route reads the body itself, to accept JSONL too), and, when the
server has API keys, the bearer scheme on every ``/v1`` operation.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from tributary_client import types

from .security import ADMIN_PREFIX, is_protected
from .settings import ServiceSettings

logger = logging.getLogger(__name__)


def _add_model(components: dict[str, Any], model: type[Any]) -> None:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components.setdefault(model.__name__, schema)


def _link_batch_operations(schema: dict[str, Any]) -> None:
    """OpenAPI links from ``POST /v1/batches`` to the operations on the job it returns."""
    paths = schema.get("paths", {})
    created = paths.get("/v1/batches", {}).get("post", {}).get("responses", {}).get("200")
    if created is None:
        return
    links = {}
    for path, operations in paths.items():
        if path.startswith("/v1/batches/{batch_id}"):
            for method, operation in operations.items():
                if "operationId" in operation:
                    links[
                        f"{method}_"
                        f"{path.removeprefix('/v1/batches/{batch_id}').strip('/') or 'batch'}"
                    ] = {
                        "operationId": operation["operationId"],
                        "parameters": {"batch_id": "$response.body#/id"},
                    }
    created["links"] = links


def complete_openapi(app: FastAPI, settings: ServiceSettings) -> dict[str, Any]:
    """``app.openapi()``: FastAPI's document plus the server's own limits and auth (built once)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    _add_model(components, types.BatchCreateRequest)
    for name in ("AttributionRequest",):
        top_k = components.get(name, {}).get("properties", {}).get("top_k")
        if top_k is not None:
            top_k["maximum"] = min(top_k.get("maximum", settings.max_top_k), settings.max_top_k)
    _link_batch_operations(schema)
    schemes: dict[str, Any] = {}
    if settings.api_keys:
        schemes["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key of this server.",
        }
    if settings.admin_keys:
        schemes["adminBearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An admin key of this server.",
        }
    if schemes:
        schema["components"]["securitySchemes"] = schemes
        for path, operations in schema.get("paths", {}).items():
            scheme = (
                "bearer"
                if is_protected(path)
                else "adminBearer"
                if path.startswith(ADMIN_PREFIX)
                else None
            )
            if scheme in schemes:
                for operation in operations.values():
                    operation["security"] = [{scheme: []}]
    app.openapi_schema = schema
    return schema
