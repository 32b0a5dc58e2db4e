"""``create_app(settings)``: the FastAPI application, its lifespan and its middleware."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from tributary_indexer.errors import TributaryIndexError
from tributary_indexer.model_loading import context_length

from . import __version__
from .admin import router as admin_router
from .batch_jobs import BatchRunner, BatchStore
from .batch_routes import router as batch_router
from .errors import envelope, install_error_handlers
from .index_reload import IndexReloader
from .loading import load_service
from .metrics import ServiceMetrics
from .micro_batcher import MicroBatcher
from .openapi_schema import complete_openapi
from .request_context import RequestContext
from .routes import answer_one, router
from .settings import ServiceSettings
from .text_bounds import max_text_chars

logger = logging.getLogger(__name__)

DESCRIPTION = """
Tributary answers *which training examples made the model say this?*

**Scores.** `score = ⟨stored(z), q(query)⟩`, an influence-function estimate computed from
LoGra-projected gradients preconditioned with the damped Fisher `(F + λI)⁻¹`. Under the
`span_gated` ranking (the default; see `GET /v1/index`) an example is ranked and scored by its
per-token influence, standardised, saturated and gated, instead of the plain sum.
**Positive** = training on the example made the response *more* likely (lowered its loss);
**negative** = *less* likely. `direction=harmful` returns the most negative.

**Score variants** (fixed when the index is built, see `GET /v1/index`):
`influence` (default) = `gᵀ(F+λI)⁻¹g_q`; `relatif` = influence divided by the example's
self-influence `sqrt(gᵀ(F+λI)⁻¹g)`, so examples that are influential on everything do not
crowd out the specific ones; `cosine` = cosine similarity in the preconditioned metric
(scores in [-1, 1]); `grad_dot` = plain gradient dot product (TracIn, no Hessian).
"""


def create_app(settings: ServiceSettings) -> FastAPI:
    """Build the app; the index and model load in the lifespan (startup fails loudly if they do not
    fit)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ready = False
        try:
            loaded = load_service(settings)
        except TributaryIndexError as exc:
            logger.error("cannot start: %s", exc)
            raise
        app.state.loaded = loaded
        app.state.max_request_chars = max_text_chars(loaded.tokenizer, loaded.engine.max_tokens)
        context = context_length(loaded.model)
        app.state.max_prompt_tokens = (
            min(settings.max_request_tokens, context) if context else settings.max_request_tokens
        )
        app.state.max_prompt_chars = max_text_chars(loaded.tokenizer, app.state.max_prompt_tokens)
        metrics: ServiceMetrics = app.state.metrics
        metrics.index_examples.set(loaded.index.n_examples)
        metrics.index_dim.set(loaded.index.dim)

        def on_batch(n: int, tokens: int) -> None:
            metrics.batch_size.observe(n)

        batcher = MicroBatcher(
            loaded.engine,
            settings.max_batch_tokens,
            settings.batch_window_ms,
            settings.queue_size,
            on_batch,
            num_threads=settings.resolved_num_threads(),
        )
        await batcher.start()
        app.state.batcher = batcher
        store = await asyncio.to_thread(
            BatchStore, settings.resolved_state_dir() / "batches.sqlite"
        )
        app.state.batch_store = store
        runner = BatchRunner(
            store,
            lambda request: answer_one(app, request),
            retention_s=settings.batch_retention_days * 86400.0,
        )
        runner.start()
        app.state.batch_runner = runner
        reloader = IndexReloader(app)
        if settings.watch_index_s > 0:
            reloader.start_watch(settings.watch_index_s)
        app.state.reloader = reloader
        # everything loaded so far (the model, the index, transformers' modules) lives as long as
        # the server: moved out of the collector's view, a full collection no longer walks it, which
        # had paused the event loop for up to a second while a large batch's objects were made
        gc.collect()
        gc.freeze()
        app.state.ready = True
        logger.info(
            "Tributary is ready: http://%s:%d/ (chat page; API docs at /docs)",
            settings.host,
            settings.port,
        )
        try:
            yield
        finally:
            app.state.ready = False
            await reloader.stop()
            await runner.stop()
            await batcher.stop()
            store.close()
            # the one served last (a reload may have replaced `loaded`)
            app.state.loaded.index.close()

    app = FastAPI(
        title="Tributary", version=__version__, description=DESCRIPTION, lifespan=lifespan
    )
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.state.ready = False
    install_error_handlers(app)
    app.add_middleware(
        RequestContext, settings=settings, metrics=app.state.metrics
    )  # inside CORS (see request_context)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id", "Idempotency-Key"],
            expose_headers=["X-Request-Id", "Retry-After"],
        )

    app.include_router(router)
    app.include_router(batch_router)
    app.include_router(admin_router)
    app.openapi = lambda: complete_openapi(app, settings)  # type: ignore[method-assign]

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        if not app.state.ready:
            return envelope(
                503,
                "the index and model are still loading",
                "unavailable_error",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        metrics: ServiceMetrics = app.state.metrics
        if getattr(app.state, "batcher", None) is not None:
            metrics.queue_depth.set(app.state.batcher.depth)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    if settings.serve_page:
        from .page import mount_page

        mount_page(app)
    return app
