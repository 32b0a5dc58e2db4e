"""The REST routes of attributions, examples, the index and generation, and the checks every route
shares: thin; the work is in :mod:`.engine` and :mod:`.generation` (batch jobs:
:mod:`.batch_routes`, admin: :mod:`.admin`).

Tokenising, batch parsing and database writes run in worker threads, so the event loop (and
with it ``/healthz``) stays responsive while a large request or batch is processed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from tributary_client import types
from tributary_indexer.data.tombstones import Tombstones
from tributary_indexer.query.index import IndexChangedError

from .engine import RequestError
from .errors import ServiceError
from .micro_batcher import QueueFullError
from .security import check_admin_key
from .text_bounds import check_text_chars

logger = logging.getLogger(__name__)

router = APIRouter()


def documented_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error ``statuses`` a route returns (and those every route
    can: 401, 408, 413, 431), each with the error envelope."""
    descriptions = {
        400: "The request is invalid; the message says what to fix.",
        401: "Missing or invalid API key (when the server has API keys).",
        403: "Admin routes are disabled on this server.",
        404: "No such resource (for batch jobs: none that this API key created).",
        408: "The request body stalled.",
        413: "The request body is over the server's limit.",
        415: "Unsupported Content-Type.",
        409: "The Idempotency-Key was used before with a different body (not retryable).",
        429: "The server is busy (see Retry-After).",
        431: "The request headers are over the server's limit.",
        503: "The index and model are still loading (see Retry-After).",
    }
    return {
        s: {"model": types.ErrorResponse, "description": descriptions[s]}
        for s in (401, 408, 413, 431, *statuses)
    }


MAX_ID = 2**63 - 1


def busy_error(state: Any, reason: str) -> ServiceError:
    """The 429 of a full queue, with the server's Retry-After."""
    return ServiceError(
        429,
        f"the server is busy ({reason}); fix: retry after the Retry-After delay",
        code="queue_full",
        headers={"Retry-After": str(state.settings.retry_after_s)},
    )


def check_ready(state: Any) -> None:
    """A 503 with Retry-After while the index and model are still loading."""
    if not state.ready:
        raise ServiceError(
            503,
            "the index and model are still loading; retry shortly",
            headers={"Retry-After": str(state.settings.retry_after_s)},
        )


def check_limits(
    app_state: object, request: types.AttributionRequest, param_prefix: str = ""
) -> None:
    """A 400 naming the parameter when ``request`` asks for more than this server allows."""
    settings = app_state.settings  # type: ignore[attr-defined]
    if request.top_k > settings.max_top_k:
        raise ServiceError(
            400,
            f"top_k={request.top_k} is over this server's limit of {settings.max_top_k}; fix: ask "
            "for fewer",
            param=param_prefix + "top_k",
            code="top_k_too_large",
        )


def _index_changed(exc: Exception) -> ServiceError:
    return ServiceError(503, str(exc), code="index_changed")


def check_index_current(state: object) -> Tombstones:
    """The removed examples now; a 503 when the index on disk was compacted under this server."""
    try:
        return state.loaded.index.removed()  # type: ignore[attr-defined,no-any-return]
    except IndexChangedError as exc:
        raise _index_changed(exc) from exc


async def answer_one(app: object, request: types.AttributionRequest) -> types.AttributionResponse:
    """Validate, tokenise (in a worker thread) and queue one request; the shared path of the API and
    batch jobs."""
    state = app.state  # type: ignore[attr-defined]
    check_ready(state)
    check_limits(state, request)
    check_index_current(state)
    engine = state.loaded.engine
    texts = (
        [m.content for m in request.messages]
        if request.messages is not None
        else [request.prompt, request.response]
    )
    check_text_chars(
        texts,
        state.max_request_chars,
        f"this server's limit of {engine.max_tokens}",
        "messages" if request.messages else "prompt",
        "request",
    )
    try:
        prepared = await asyncio.to_thread(engine.prepare, request)
    except RequestError as exc:
        raise ServiceError(400, str(exc), param=exc.param, code=exc.code) from exc
    try:
        response = await state.batcher.submit(prepared)
    except IndexChangedError as exc:
        raise _index_changed(exc) from exc
    except QueueFullError as exc:
        raise busy_error(state, str(exc)) from exc
    state.metrics.observe_timings(response.timings.model_dump())
    state.metrics.tokens.inc(prepared.n_tokens)
    return response


@router.post(
    "/v1/attributions",
    response_model=types.AttributionResponse,
    responses=documented_errors(400, 429, 503),
    summary="Attribute a generation to training examples",
)
async def create_attribution(body: types.AttributionRequest, request: Request) -> Response:
    """Rank the training examples that most influenced the response (see the scoring notes
    above)."""
    # The engine built a validated AttributionResponse; serialising it once here skips FastAPI's
    # second validation of the same object (the documented response_model stays the schema).
    response = await answer_one(request.app, body)
    t = response.timings
    request.state.log_extra = (
        f" top_k={body.top_k} examples={len(response.examples)} gradient={t.gradient_ms:.1f}ms "
        f"precondition={t.precondition_ms:.1f}ms search={t.search_ms:.1f}ms "
        f"fetch={t.fetch_ms:.1f}ms token_wise={t.token_wise_ms:.1f}ms"
    )
    return Response(response.model_dump_json(), media_type="application/json")


@router.get(
    "/v1/examples/{example_id}",
    response_model=types.Example,
    responses=documented_errors(400, 404, 503),
    summary="One training example",
)
async def get_example(
    example_id: Annotated[int, Path(ge=0, le=MAX_ID, description="Global id of the example.")],
    request: Request,
) -> types.Example:
    """The full text and metadata of a training example by its global id."""
    check_ready(request.app.state)
    loaded = request.app.state.loaded
    record = loaded.index.store.get(example_id)
    if record is not None and record.id in check_index_current(request.app.state):
        raise ServiceError(
            404,
            f"example {example_id} was removed from this index",
            param="example_id",
            code="example_removed",
        )
    if record is None:
        raise ServiceError(
            404,
            f"no example with id {example_id}; ids run from 0 to {loaded.index.n_examples - 1}",
            param="example_id",
            code="example_not_found",
        )
    return loaded.engine.views.example(record)


MAX_RECORD_ID_CHARS = 1024


_RECORD_ID_PARAMETER = {
    "parameters": [
        {
            "name": "record_id",
            "in": "query",
            "required": True,
            "description": "The record's `id` in your corpus.",
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_RECORD_ID_CHARS},
        }
    ]
}


@router.get(
    "/v1/examples",
    response_model=types.Example,
    responses=documented_errors(400, 404, 409, 503),
    openapi_extra=_RECORD_ID_PARAMETER,
    summary="One training example by its record id",
)
async def find_example(
    request: Request, record_id: Annotated[str | None, Query(include_in_schema=False)] = None
) -> types.Example:
    """The training example whose corpus record had `id` = `record_id` (the id your data uses)."""
    if record_id is None:
        raise ServiceError(
            400,
            "give ?record_id=<the record's id in your corpus>, or use GET "
            "/v1/examples/{example_id}",
            param="record_id",
            code="missing_record_id",
        )
    if not record_id or len(record_id) > MAX_RECORD_ID_CHARS:
        raise ServiceError(
            400,
            f"record_id must be 1 to {MAX_RECORD_ID_CHARS} characters, got {len(record_id)}",
            param="record_id",
            code="invalid_record_id",
        )
    check_ready(request.app.state)
    loaded = request.app.state.loaded
    removed = check_index_current(request.app.state)
    found = [r for r in loaded.index.store.get_by_external_id(record_id) if r.id not in removed]
    if not found:
        raise ServiceError(
            404,
            f"no example with record_id {record_id!r} in this index (record ids are the `id` "
            "fields of the corpus records; records without one are found by example_id)",
            param="record_id",
            code="example_not_found",
        )
    if len(found) > 1:  # only in an index built before duplicate record ids were refused
        ids = ", ".join(str(r.id) for r in found[:10])
        raise ServiceError(
            409,
            f"record_id {record_id!r} names {len(found)} examples ({ids}) in this index; fix: use "
            "GET /v1/examples/{example_id}, and rebuild the index (builds now refuse duplicate "
            "ids)",
            param="record_id",
            code="ambiguous_record_id",
        )
    return loaded.engine.views.example(found[0])


@router.get(
    "/v1/index",
    response_model=types.IndexInfo,
    responses=documented_errors(503),
    summary="What the loaded index is",
)
async def index_info(request: Request) -> types.IndexInfo:
    """Manifest summary: model hashes, projector, score variant, damping, size."""
    check_ready(request.app.state)
    removed = check_index_current(request.app.state)  # the composition below counts without them
    loaded = request.app.state.loaded
    m = loaded.index.manifest
    manifest = m.to_dict()
    # counted over the example store once per removal generation: off the event loop
    composition = await asyncio.to_thread(lambda: loaded.engine.composition)
    return types.IndexInfo(
        index_id=loaded.engine.index_id,
        format_version=m.format_version,
        model=manifest["model"],
        projector={k: v for k, v in manifest["projector"].items() if k != "modules"}
        | {"n_modules": len(m.projector.modules)},
        score_variant=m.score_variant,
        damping=manifest["damping"],
        n_examples=m.n_examples,
        dim=m.dim,
        shards=len(m.shards),
        created_at=m.created_at,
        ranking=loaded.engine.index.ranking.name,
        composition=composition,
        prompting=loaded.prompting,
        removed_examples=len(removed),
    )


@router.post(
    "/v1/admin/reload",
    response_model=types.IndexReload,
    responses=documented_errors(401, 403, 409, 503),
    summary="Serve the index as it is on disk now (after `tributary index add`)",
)
async def reload_index(request: Request) -> types.IndexReload:
    """Load the index again if its manifest changed, swapping it in between micro-batches. Needs an
    admin key (TRIBUTARY_ADMIN_KEYS); 409 when the index on disk was rebuilt rather than
    extended."""
    state = request.app.state
    check_admin_key(request, state.settings.admin_keys)
    if not state.ready:
        raise ServiceError(
            503,
            "the index and model are still loading; retry shortly",
            headers={"Retry-After": str(state.settings.retry_after_s)},
        )
    return await state.reloader.reload()  # type: ignore[no-any-return]


@router.post(
    "/v1/generate",
    response_model=types.GenerateResponse,
    responses=documented_errors(400, 404, 429, 503),
    summary="Generate with the model",
)
async def generate(body: types.GenerateRequest, request: Request) -> types.GenerateResponse:
    """Let the served model answer a prompt (enabled by TRIBUTARY_ENABLE_GENERATE, on in the demo).

    The prompt plus `max_new_tokens` must fit the model's context (400 otherwise, naming it);
    `max_new_tokens` is capped at the server's TRIBUTARY_MAX_NEW_TOKENS; a temperature under 0.01
    decodes greedily. Generations share the attribution queue (429 + Retry-After when it is full)
    and take turns with attributions on the model.
    """
    state = request.app.state
    if not state.settings.enable_generate:
        raise ServiceError(
            404,
            "generation is disabled on this server; fix: start it with --enable-generate "
            "(TRIBUTARY_ENABLE_GENERATE=true)",
            code="generate_disabled",
        )
    check_ready(state)
    from .generation import prepare_generation, run_generation

    texts = [m.content for m in body.messages] if body.messages is not None else [body.prompt]
    check_text_chars(
        texts,
        state.max_prompt_chars,
        f"the limit of {state.max_prompt_tokens}",
        "messages" if body.messages else "prompt",
        "prompt",
    )
    prepared = await asyncio.to_thread(
        prepare_generation,
        state.loaded,
        body,
        state.settings.max_new_tokens,
        state.settings.max_request_tokens,
    )
    try:
        return await state.batcher.submit_job(lambda: run_generation(state.loaded, prepared))  # type: ignore[no-any-return]
    except QueueFullError as exc:
        raise busy_error(state, str(exc)) from exc
