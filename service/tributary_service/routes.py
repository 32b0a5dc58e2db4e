"""The REST routes (DESIGN §4): thin; the work is in :mod:`.engine` and :mod:`.batch_jobs`."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from tributary_client import types

from .engine import RequestError
from .errors import ServiceError
from .micro_batcher import QueueFullError
from .security import check_admin_key

logger = logging.getLogger(__name__)

router = APIRouter()
_ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": types.ErrorResponse}, 401: {"model": types.ErrorResponse}, 404: {"model": types.ErrorResponse},
           409: {"model": types.ErrorResponse}, 429: {"model": types.ErrorResponse}}


def _check_limits(app_state: object, request: types.AttributionRequest, param_prefix: str = "") -> None:
    settings = app_state.settings  # type: ignore[attr-defined]
    if request.top_k > settings.max_top_k:
        raise ServiceError(400, f"top_k={request.top_k} is over this server's limit of {settings.max_top_k}; fix: ask for fewer",
                           param=param_prefix + "top_k", code="top_k_too_large")


async def answer_one(app: object, request: types.AttributionRequest) -> types.AttributionResponse:
    """Validate, tokenise and queue one request; the shared path of the API and batch jobs."""
    state = app.state  # type: ignore[attr-defined]
    if not state.ready:
        raise ServiceError(503, "the index and model are still loading; retry shortly",
                           headers={"Retry-After": str(state.settings.retry_after_s)})
    _check_limits(state, request)
    try:
        prepared = state.loaded.engine.prepare(request)
    except RequestError as exc:
        raise ServiceError(400, str(exc), param=exc.param, code=exc.code) from exc
    try:
        response = await state.batcher.submit(prepared)
    except QueueFullError as exc:
        raise ServiceError(429, f"the server is busy ({exc}); fix: retry after the Retry-After delay",
                           code="queue_full", headers={"Retry-After": str(state.settings.retry_after_s)}) from exc
    state.metrics.observe_timings(response.timings.model_dump())
    state.metrics.tokens.inc(prepared.n_tokens)
    return response


@router.post("/v1/attributions", response_model=types.AttributionResponse, responses=_ERRORS,
             summary="Attribute a generation to training examples")
async def create_attribution(body: types.AttributionRequest, request: Request) -> Response:
    """Rank the training examples that most influenced the response (see the scoring notes above)."""
    # The engine built a validated AttributionResponse; serialising it once here skips FastAPI's
    # second validation of the same object (the documented response_model stays the schema).
    response = await answer_one(request.app, body)
    t = response.timings
    request.state.log_extra = (f" top_k={body.top_k} examples={len(response.examples)} gradient={t.gradient_ms:.1f}ms "
                               f"precondition={t.precondition_ms:.1f}ms search={t.search_ms:.1f}ms fetch={t.fetch_ms:.1f}ms "
                               f"token_wise={t.token_wise_ms:.1f}ms")
    return Response(response.model_dump_json(), media_type="application/json")


@router.get("/v1/examples/{example_id}", response_model=types.Example, responses=_ERRORS, summary="One training example")
async def get_example(example_id: int, request: Request) -> types.Example:
    """The full text and metadata of a training example by its global id."""
    loaded = request.app.state.loaded
    record = loaded.index.store.get(example_id)
    if record is None:
        raise ServiceError(404, f"no example with id {example_id}; ids run from 0 to {loaded.index.n_examples - 1}",
                           param="example_id", code="example_not_found")
    return loaded.engine.views.example(record)


MAX_RECORD_ID_CHARS = 1024


@router.get("/v1/examples", response_model=types.Example, responses=_ERRORS,
            summary="One training example by its record id")
async def find_example(request: Request, record_id: str | None = None) -> types.Example:
    """The training example whose corpus record had `id` = `record_id` (the id your data uses)."""
    if record_id is None:
        raise ServiceError(400, "give ?record_id=<the record's id in your corpus>, or use GET /v1/examples/{example_id}",
                           param="record_id", code="missing_record_id")
    if not record_id or len(record_id) > MAX_RECORD_ID_CHARS:
        raise ServiceError(400, f"record_id must be 1 to {MAX_RECORD_ID_CHARS} characters, got {len(record_id)}",
                           param="record_id", code="invalid_record_id")
    loaded = request.app.state.loaded
    found = loaded.index.store.get_by_external_id(record_id)
    if not found:
        raise ServiceError(404, f"no example with record_id {record_id!r} in this index (record ids are the `id` "
                           "fields of the corpus records; records without one are found by example_id)",
                           param="record_id", code="example_not_found")
    if len(found) > 1:  # only in an index built before duplicate record ids were refused
        ids = ", ".join(str(r.id) for r in found[:10])
        raise ServiceError(409, f"record_id {record_id!r} names {len(found)} examples ({ids}) in this index; fix: use "
                           "GET /v1/examples/{example_id}, and rebuild the index (builds now refuse duplicate ids)",
                           param="record_id", code="ambiguous_record_id")
    return loaded.engine.views.example(found[0])


@router.get("/v1/index", response_model=types.IndexInfo, summary="What the loaded index is")
async def index_info(request: Request) -> types.IndexInfo:
    """Manifest summary: model hashes, projector, score variant, damping, size."""
    loaded = request.app.state.loaded
    m = loaded.index.manifest
    return types.IndexInfo(
        index_id=loaded.engine.index_id, format_version=m.format_version, model=m.to_dict()["model"],
        projector={k: v for k, v in m.to_dict()["projector"].items() if k != "modules"} | {"n_modules": len(m.projector.modules)},
        score_variant=m.score_variant, damping=m.to_dict()["damping"], n_examples=m.n_examples, dim=m.dim,
        shards=len(m.shards), created_at=m.created_at,
        ranking=loaded.engine.index.ranking, composition=loaded.engine.composition, prompting=loaded.prompting,
    )


@router.post("/v1/admin/reload", response_model=types.IndexReload, responses=_ERRORS,
             summary="Serve the index as it is on disk now (after `tributary index add`)")
async def reload_index(request: Request) -> types.IndexReload:
    """Load the index again if its manifest changed, swapping it in between micro-batches. Needs an admin key
    (TRIBUTARY_ADMIN_KEYS); 409 when the index on disk was rebuilt rather than extended."""
    state = request.app.state
    check_admin_key(request, state.settings.admin_keys)
    if not state.ready:
        raise ServiceError(503, "the index and model are still loading; retry shortly",
                           headers={"Retry-After": str(state.settings.retry_after_s)})
    return await state.reloader.reload()  # type: ignore[no-any-return]


@router.post("/v1/generate", response_model=types.GenerateResponse, responses=_ERRORS, summary="Generate with the model")
async def generate(body: types.GenerateRequest, request: Request) -> types.GenerateResponse:
    """Let the served model answer a prompt (enabled by TRIBUTARY_ENABLE_GENERATE, on in the demo)."""
    state = request.app.state
    if not state.settings.enable_generate:
        raise ServiceError(404, "generation is disabled on this server; fix: start it with --enable-generate "
                           "(TRIBUTARY_ENABLE_GENERATE=true)", code="generate_disabled")
    from .generation import generate_text

    settings = state.settings
    return await state.batcher.run_in_model_thread(  # type: ignore[return-value]
        lambda: generate_text(state.loaded, body, settings.max_new_tokens, settings.max_request_tokens))


def _parse_batch_body(raw: bytes, content_type: str) -> types.BatchCreateRequest:
    if "json" in content_type and "jsonl" not in content_type and "ndjson" not in content_type:
        try:
            return types.BatchCreateRequest.model_validate_json(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ServiceError(400, f"{where}: {err['msg']}; fix the batch body", param=where, code="invalid_batch") from exc
    lines = []
    for n, text in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            lines.append(types.BatchRequestLine.model_validate(json.loads(text)))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ServiceError(400, f"line {n} of the JSONL body is not a request line {{custom_id, body}}: {exc}",
                               param=f"line {n}", code="invalid_batch_line") from exc
    if not lines:
        raise ServiceError(400, "the batch has no request lines; fix: send JSONL lines {custom_id, body}", code="empty_batch")
    return types.BatchCreateRequest(requests=lines)


@router.post("/v1/batches", response_model=types.Batch, responses=_ERRORS, summary="Create a batch job")
async def create_batch(request: Request) -> types.Batch:
    """JSON `{requests: [{custom_id, body}], metadata}` or a JSONL body of `{custom_id, body}` lines."""
    body = _parse_batch_body(await request.body(), request.headers.get("content-type", "application/json"))
    seen: set[str] = set()
    for i, line in enumerate(body.requests):
        if line.custom_id in seen:
            raise ServiceError(400, f"custom_id {line.custom_id!r} appears twice; fix: make custom_ids unique",
                               param=f"requests.{i}.custom_id", code="duplicate_custom_id")
        seen.add(line.custom_id)
        _check_limits(request.app.state, line.body, param_prefix=f"requests.{i}.body.")
    batch = request.app.state.batch_store.create(body.requests, body.metadata, request.headers.get("idempotency-key"))
    request.app.state.batch_runner.notify()
    return batch


def _batch_or_404(request: Request, batch_id: str) -> types.Batch:
    batch = request.app.state.batch_store.get(batch_id)
    if batch is None:
        raise ServiceError(404, f"no batch {batch_id!r}", param="batch_id", code="batch_not_found")
    return batch


@router.get("/v1/batches/{batch_id}", response_model=types.Batch, responses=_ERRORS, summary="A batch job's status")
async def get_batch(batch_id: str, request: Request) -> types.Batch:
    return _batch_or_404(request, batch_id)


@router.post("/v1/batches/{batch_id}/cancel", response_model=types.Batch, responses=_ERRORS, summary="Cancel a batch job")
async def cancel_batch(batch_id: str, request: Request) -> types.Batch:
    _batch_or_404(request, batch_id)
    batch = request.app.state.batch_store.request_cancel(batch_id)
    request.app.state.batch_runner.notify()
    return batch


@router.get("/v1/batches/{batch_id}/results", responses=_ERRORS, summary="A batch job's results (JSONL)")
async def batch_results(batch_id: str, request: Request) -> StreamingResponse:
    """One `{custom_id, response, error}` line per finished request, in input order."""
    _batch_or_404(request, batch_id)
    return StreamingResponse(request.app.state.batch_store.result_lines(batch_id), media_type="application/jsonl")
