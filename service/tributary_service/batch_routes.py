"""The batch-job routes: create (JSON or JSONL body), status, cancel, delete, results.

Thin, as :mod:`.routes`: parsing the body and writing the job run in a worker thread
(:mod:`.batch_input`, :mod:`.batch_jobs`, whose runner attributes the lines). A job
belongs to the API key that created it: another key gets a 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import StreamingResponse
from tributary_client import types
from tributary_indexer.data.tombstones import Tombstones

from .batch_input import MEDIA_TYPES, parse_batch_body
from .batch_jobs import IdempotencyConflict, TooManyOpenBatches
from .collector_pause import paused_collection
from .errors import ServiceError
from .routes import check_index_current, check_limits, check_ready, documented_errors

logger = logging.getLogger(__name__)

router = APIRouter()

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"


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
    responses=documented_errors(400, 409, 415, 429, 503),
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
    check_ready(state)
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
                check_limits(state, line.body, param_prefix=f"requests.{i}.body.")
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
    check_ready(request.app.state)
    batch = await asyncio.to_thread(
        request.app.state.batch_store.get, batch_id, request.state.tenant
    )
    if batch is None:
        raise ServiceError(404, f"no batch {batch_id!r}", param="batch_id", code="batch_not_found")
    return batch  # type: ignore[no-any-return]


@router.get(
    "/v1/batches/{batch_id}",
    response_model=types.Batch,
    responses=documented_errors(400, 404, 503),
    summary="A batch job's status",
)
async def get_batch(batch_id: BatchId, request: Request) -> types.Batch:
    return await _batch_or_404(request, batch_id)


@router.post(
    "/v1/batches/{batch_id}/cancel",
    response_model=types.Batch,
    responses=documented_errors(400, 404, 503),
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
    responses=documented_errors(400, 404, 503),
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
    responses=documented_errors(400, 404, 503)
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
    removed = check_index_current(request.app.state)
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
