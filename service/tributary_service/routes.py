"""The REST routes: thin; the work is in :mod:`.engine`, :mod:`.generation` and :mod:`.batch_jobs`.

Tokenising, batch parsing and database writes run in worker threads, so the event loop (and
with it ``/healthz``) stays responsive while a large request or batch is processed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from tributary_client import types
from tributary_indexer.data.tombstones import Tombstones
from tributary_indexer.query.index import IndexChangedError

from .batch_input import MEDIA_TYPES, parse_batch_body
from .batch_jobs import IdempotencyConflict, TooManyOpenBatches
from .collector_pause import paused_collection
from .engine import RequestError
from .errors import ServiceError
from .micro_batcher import QueueFullError
from .security import check_admin_key
from .text_bounds import check_text_chars

logger = logging.getLogger(__name__)

router = APIRouter()


def _documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
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


IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
MAX_ID = 2**63 - 1


def _busy(state: Any, reason: str) -> ServiceError:
    return ServiceError(
        429,
        f"the server is busy ({reason}); fix: retry after the Retry-After delay",
        code="queue_full",
        headers={"Retry-After": str(state.settings.retry_after_s)},
    )


def _check_ready(state: Any) -> None:
    if not state.ready:
        raise ServiceError(
            503,
            "the index and model are still loading; retry shortly",
            headers={"Retry-After": str(state.settings.retry_after_s)},
        )


def _check_limits(
    app_state: object, request: types.AttributionRequest, param_prefix: str = ""
) -> None:
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


def _check_index_current(state: object) -> Tombstones:
    """The removed examples now; a 503 when the index on disk was compacted under this server."""
    try:
        return state.loaded.index.removed()  # type: ignore[attr-defined,no-any-return]
    except IndexChangedError as exc:
        raise _index_changed(exc) from exc


async def answer_one(app: object, request: types.AttributionRequest) -> types.AttributionResponse:
    """Validate, tokenise (in a worker thread) and queue one request; the shared path of the API and
    batch jobs."""
    state = app.state  # type: ignore[attr-defined]
    _check_ready(state)
    _check_limits(state, request)
    _check_index_current(state)
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
        raise _busy(state, str(exc)) from exc
    state.metrics.observe_timings(response.timings.model_dump())
    state.metrics.tokens.inc(prepared.n_tokens)
    return response


@router.post(
    "/v1/attributions",
    response_model=types.AttributionResponse,
    responses=_documented(400, 429, 503),
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
    responses=_documented(400, 404, 503),
    summary="One training example",
)
async def get_example(
    example_id: Annotated[int, Path(ge=0, le=MAX_ID, description="Global id of the example.")],
    request: Request,
) -> types.Example:
    """The full text and metadata of a training example by its global id."""
    _check_ready(request.app.state)
    loaded = request.app.state.loaded
    record = loaded.index.store.get(example_id)
    if record is not None and record.id in _check_index_current(request.app.state):
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
    responses=_documented(400, 404, 409, 503),
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
    _check_ready(request.app.state)
    loaded = request.app.state.loaded
    removed = _check_index_current(request.app.state)
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
    responses=_documented(503),
    summary="What the loaded index is",
)
async def index_info(request: Request) -> types.IndexInfo:
    """Manifest summary: model hashes, projector, score variant, damping, size."""
    _check_ready(request.app.state)
    removed = _check_index_current(request.app.state)  # the composition below counts without them
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
    responses=_documented(401, 403, 409, 503),
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
    responses=_documented(400, 404, 429, 503),
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
    _check_ready(state)
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
        raise _busy(state, str(exc)) from exc


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "JSON `{requests: [{custom_id, body}], metadata}`, or JSONL "
        "(`application/jsonl` or `application/x-ndjson`): one `{custom_id, body}` object per line. "
        "custom_ids must be unique; at most TRIBUTARY_MAX_BATCH_LINES requests and "
        "TRIBUTARY_MAX_BATCH_BODY_BYTES bytes.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/BatchCreateRequest"}},
            "application/jsonl": {
                "schema": {"type": "string", "description": "One BatchRequestLine per line."}
            },
            "application/x-ndjson": {
                "schema": {"type": "string", "description": "One BatchRequestLine per line."}
            },
        },
    }
}


@router.post(
    "/v1/batches",
    response_model=types.Batch,
    responses=_documented(400, 409, 415, 429, 503),
    summary="Create a batch job",
    openapi_extra=_BATCH_BODY,
)
async def create_batch(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Retrying with the same key and body returns the same job; "
            "keys are per API key, and one used with another body is a 409.",
        ),
    ] = None,
) -> types.Batch:
    """Create a job that attributes every request line in the background; it belongs to the API key
    that created it."""
    state = request.app.state
    _check_ready(state)
    media_type = _media_type(request.headers.get("content-type"))
    if media_type not in MEDIA_TYPES:
        raise ServiceError(
            415,
            f"Content-Type {media_type or '(none)'!r} is not accepted here; fix: send "
            + " or ".join(MEDIA_TYPES),
            param="Content-Type",
            code="unsupported_media_type",
        )
    raw = bytearray()
    async for (
        chunk
    ) in request.stream():  # the middleware counts the bytes against the limit as they arrive
        raw += chunk
    tenant = request.state.tenant

    def intake() -> types.Batch:
        # hundreds of thousands of acyclic objects live here until the batch is stored: the
        # collector is paused so that it does not walk them while the event loop waits
        with paused_collection():
            body = parse_batch_body(bytes(raw), media_type, state.settings.max_batch_lines)
            for i, line in enumerate(body.requests):
                _check_limits(state, line.body, param_prefix=f"requests.{i}.body.")
            return state.batch_store.create(
                tenant,
                body.requests,
                body.metadata,
                idempotency_key,
                state.settings.max_open_batches,
            )

    try:
        batch = await asyncio.to_thread(intake)
    except IdempotencyConflict:
        raise ServiceError(
            409,
            "this Idempotency-Key was used before with a different body; fix: use a new key for a "
            "new batch",
            param="Idempotency-Key",
            code="idempotency_key_reused",
            headers={"x-should-retry": "false"},
        ) from None
    except TooManyOpenBatches:
        raise ServiceError(
            429,
            f"this API key already has {state.settings.max_open_batches} unfinished batch jobs, "
            "the server's limit; fix: wait for one to finish or cancel one",
            code="too_many_open_batches",
            headers={"Retry-After": str(max(state.settings.retry_after_s, 30))},
        ) from None
    state.batch_runner.notify()
    return batch  # type: ignore[no-any-return]


BatchId = Annotated[str, Path(max_length=128, description="Id of the batch job.")]


async def _batch_or_404(request: Request, batch_id: str) -> types.Batch:
    _check_ready(request.app.state)
    batch = await asyncio.to_thread(
        request.app.state.batch_store.get, batch_id, request.state.tenant
    )
    if batch is None:
        raise ServiceError(404, f"no batch {batch_id!r}", param="batch_id", code="batch_not_found")
    return batch  # type: ignore[no-any-return]


@router.get(
    "/v1/batches/{batch_id}",
    response_model=types.Batch,
    responses=_documented(400, 404, 503),
    summary="A batch job's status",
)
async def get_batch(batch_id: BatchId, request: Request) -> types.Batch:
    return await _batch_or_404(request, batch_id)


@router.post(
    "/v1/batches/{batch_id}/cancel",
    response_model=types.Batch,
    responses=_documented(400, 404, 503),
    summary="Cancel a batch job",
)
async def cancel_batch(batch_id: BatchId, request: Request) -> types.Batch:
    await _batch_or_404(request, batch_id)
    batch = await asyncio.to_thread(
        request.app.state.batch_store.request_cancel, batch_id, request.state.tenant
    )
    if batch is None:  # deleted meanwhile
        raise ServiceError(404, f"no batch {batch_id!r}", param="batch_id", code="batch_not_found")
    request.app.state.batch_runner.notify()
    return batch  # type: ignore[no-any-return]


@router.delete(
    "/v1/batches/{batch_id}",
    response_model=types.BatchDeleted,
    responses=_documented(400, 404, 503),
    summary="Delete a batch job and its results",
)
async def delete_batch(batch_id: BatchId, request: Request) -> types.BatchDeleted:
    """Delete the job (cancelling it if it still runs) and its results. Finished jobs are also
    deleted by themselves TRIBUTARY_BATCH_RETENTION_DAYS after they finish."""
    await _batch_or_404(request, batch_id)
    if not await asyncio.to_thread(
        request.app.state.batch_store.delete, batch_id, request.state.tenant
    ):
        raise ServiceError(404, f"no batch {batch_id!r}", param="batch_id", code="batch_not_found")
    return types.BatchDeleted(id=batch_id, deleted=True)


@router.get(
    "/v1/batches/{batch_id}/results",
    responses=_documented(400, 404, 503)
    | {
        200: {
            "description": "One `BatchResultLine` per finished request, in input order (JSONL).",
            "content": {"application/jsonl": {"schema": {"type": "string"}}},
        }
    },
    summary="A batch job's results (JSONL)",
)
async def batch_results(batch_id: BatchId, request: Request) -> StreamingResponse:
    """One `{custom_id, response, error}` line per finished request, in input order, streamed from
    the database."""
    await _batch_or_404(request, batch_id)
    removed = _check_index_current(request.app.state)
    lines = request.app.state.batch_store.result_lines(batch_id)
    return StreamingResponse(
        _without_removed(lines, removed) if len(removed) else lines, media_type="application/jsonl"
    )


def _without_removed(lines: Iterator[str], removed: Tombstones) -> Iterator[str]:
    """Result lines with the examples removed since they were computed taken out."""
    for line in lines:
        data = json.loads(line)
        response = data.get("response")
        if response and any(e["example_id"] in removed for e in response.get("examples", [])):
            response["examples"] = [
                e for e in response["examples"] if e["example_id"] not in removed
            ]
            line = json.dumps(data) + "\n"
        yield line
