"""Admin routes: take training examples out of every answer (``POST /v1/admin/removals``).

Enabled only when the server has admin keys (``TRIBUTARY_ADMIN_KEYS``); every call must carry
one of them as ``Authorization: Bearer <key>`` (an ordinary API key is not enough). A
removal writes the index's ``tombstones.json`` atomically, under the same lock as
``tributary index remove``, and is in force from the next request on.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from tributary_client import types
from tributary_indexer.build.manifest import utc_timestamp
from tributary_indexer.data.tombstones import (
    TombstoneBusyError,
    add_removal,
    id_space_of,
    select_examples,
)
from tributary_indexer.errors import IndexIntegrityError, OutputDirectoryError

from .errors import ServiceError
from .security import check_admin_key

logger = logging.getLogger(__name__)

router = APIRouter()
_ERRORS: dict[int | str, dict[str, object]] = {
    s: {"model": types.ErrorResponse} for s in (400, 401, 403, 404, 408, 409, 413, 431, 503)
}


@router.post(
    "/v1/admin/removals",
    response_model=types.RemovalResponse,
    responses=_ERRORS,
    summary="Remove training examples from every answer (admin)",
)
async def create_removal(body: types.RemovalRequest, request: Request) -> types.RemovalResponse:
    """Tombstone the examples of some record ids, a provider or a source: no attribution, batch,
    example lookup or report returns them again, from the next request on. `tributary index compact`
    later drops them from disk."""
    check_admin_key(request, request.app.state.settings.admin_keys)
    state = request.app.state
    if not state.ready:
        raise ServiceError(
            503,
            "the index is still loading; retry shortly",
            headers={"Retry-After": str(state.settings.retry_after_s)},
        )
    index = state.loaded.index
    try:
        index.removed()  # refuses when the index on disk was rewritten under this server
        selection = await run_in_threadpool(
            select_examples, index.store, body.record_ids, body.provider, body.source
        )
    except IndexIntegrityError as exc:
        raise ServiceError(503, str(exc), code="index_changed") from exc
    if not len(selection.ids):
        raise ServiceError(
            404,
            f"nothing in this index matches {selection.selector}; nothing was removed (fix: check "
            "the record ids, provider or source against GET /v1/examples and GET /v1/index)",
            code="nothing_matched",
        )
    try:
        tombstones, added = await run_in_threadpool(
            add_removal,
            index.paths.root,
            id_space_of(index.manifest),
            selection.ids,
            selection.selector,
            utc_timestamp(),
            body.reason,
            False,
        )
    except TombstoneBusyError as exc:
        raise ServiceError(409, str(exc), code="index_busy", headers={"Retry-After": "5"}) from exc
    except OutputDirectoryError as exc:
        raise ServiceError(
            503,
            f"cannot write the removal into the index directory ({exc}); fix: make it writable for "
            "the server, or run `tributary index remove` where it is",
            code="index_read_only",
        ) from exc
    except IndexIntegrityError as exc:
        raise ServiceError(503, str(exc), code="index_changed") from exc
    index.removed()
    logger.warning(
        "removed %d examples (%s) by admin request %s",
        added,
        selection.selector,
        request.state.request_id,
    )
    return types.RemovalResponse(
        removed=added,
        already_removed=int(len(selection.ids)) - added,
        total_removed=len(tombstones),
        generation=tombstones.generation,
        not_found=selection.not_found[:1000],
    )
