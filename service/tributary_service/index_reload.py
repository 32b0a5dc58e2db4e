"""Serving a grown index without a restart: ``tributary index add`` writes new shards and a new
manifest (last, atomically); the running server loads them on ``POST /v1/admin/reload`` or, with
``TRIBUTARY_WATCH_INDEX_S``, when it sees the manifest change.

The new index is opened and checked off the event loop (the old one keeps answering meanwhile),
then swapped in on the model thread, between micro-batches, so every attribution runs wholly
against one index. Only an index that extends the loaded one is taken: the same model and
tokenizer, projector and Hessian (what ``index add`` keeps); anything else (a rebuilt index) needs
a restart, and the reload says so. A failed reload leaves the served index as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from typing import Any

from tributary_client import types
from tributary_indexer.errors import TributaryIndexError
from tributary_indexer.query.index import AttributionIndex

from .background import cancel_and_wait
from .engine import AttributionEngine
from .errors import ServiceError
from .loading import LoadedService
from .prompt_format import infer_prompting

logger = logging.getLogger(__name__)

__all__ = ["IndexReloader", "manifest_digest"]


def manifest_digest(loaded_or_index: LoadedService | AttributionIndex) -> str:
    """sha256 of the index directory's ``manifest.json`` as it is on disk now ("" when
    unreadable)."""
    index = loaded_or_index.index if isinstance(loaded_or_index, LoadedService) else loaded_or_index
    try:
        return hashlib.sha256(index.paths.manifest.read_bytes()).hexdigest()
    except OSError:
        return ""


def _same_lineage(old: AttributionIndex, new: AttributionIndex) -> list[str]:
    """What differs between two indexes that ``index add`` keeps equal (empty when none)."""
    a, b = old.manifest, new.manifest
    checks = {
        "model.weights_sha256": (a.model.weights_sha256, b.model.weights_sha256),
        "model.config_sha256": (a.model.config_sha256, b.model.config_sha256),
        "tokenizer_sha256": (a.tokenizer_sha256, b.tokenizer_sha256),
        "projector": (a.projector.params.get("fingerprint"), b.projector.params.get("fingerprint")),
        "score_variant": (a.score_variant, b.score_variant),
        "dim": (a.dim, b.dim),
        "objective": (a.objective, b.objective),
    }
    return [name for name, (x, y) in checks.items() if x != y]


class IndexReloader:
    """Loads a changed index into a running app (``app.state.loaded``) and the micro-batcher."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.digest = manifest_digest(app.state.loaded)
        self._failed_digest: str | None = None

    async def reload(self) -> types.IndexReload:
        """Load the index again if its manifest changed; raise :class:`ServiceError` when it cannot
        be served."""
        async with self._lock:
            state = self.app.state
            old: LoadedService = state.loaded
            before = (old.engine.index_id, old.index.n_examples)
            digest = manifest_digest(old)
            if digest == self.digest:
                return types.IndexReload(
                    reloaded=False,
                    index_id=before[0],
                    previous_index_id=before[0],
                    n_examples=before[1],
                    previous_n_examples=before[1],
                    shards=len(old.index.shards),
                )
            loaded = await asyncio.to_thread(self._open, old, state.settings)
            previous = await state.batcher.run_in_model_thread(lambda: self._swap(loaded))
            previous.index.close()
            self.digest = digest
            state.metrics.index_examples.set(loaded.index.n_examples)
            logger.info(
                "reloaded index %s: %d -> %d examples (%s -> %s)",
                loaded.index.paths.root,
                before[1],
                loaded.index.n_examples,
                before[0],
                loaded.engine.index_id,
            )
            return types.IndexReload(
                reloaded=True,
                index_id=loaded.engine.index_id,
                previous_index_id=before[0],
                n_examples=loaded.index.n_examples,
                previous_n_examples=before[1],
                shards=len(loaded.index.shards),
            )

    def _open(self, old: LoadedService, settings: Any) -> LoadedService:
        """Open and check the index on disk (a worker thread); the served one is untouched."""
        try:
            index = AttributionIndex(
                settings.index,
                verify_checksums=settings.verify_checksums,
                rerank_factor=settings.rerank_factor,
                ranking=settings.ranking_overrides(),
                nprobe=settings.nprobe,
                search_device=settings.search_device,
            )
        except TributaryIndexError as exc:
            raise ServiceError(
                409,
                f"the index on disk cannot be loaded ({exc}); the server keeps serving "
                f"{old.engine.index_id}",
                code="index_not_loadable",
            ) from exc
        differing = _same_lineage(old.index, index)
        if differing:
            index.close()
            raise ServiceError(
                409,
                f"the index on disk differs from the one served in {', '.join(differing)} (it was "
                "rebuilt, not extended with `tributary index add`); fix: restart the server to "
                "serve it",
                code="index_rebuilt",
            )
        try:
            device = next(old.model.parameters()).device
            index.reference(
                device
            )  # span_gated's reference sample, drawn over the grown index, loaded here
            engine = AttributionEngine(
                index,
                old.model,
                old.tokenizer,
                old.engine.computer,
                max_tokens=settings.max_request_tokens,
                snippet_chars=settings.snippet_chars,
            )
            prompting = infer_prompting(index.store, old.tokenizer, settings.prompt_format)
        except Exception:
            index.close()
            raise
        return dataclasses.replace(old, index=index, engine=engine, prompting=prompting)

    def _swap(self, loaded: LoadedService) -> LoadedService:
        """On the model thread, between batches: serve ``loaded``; return what was served."""
        previous: LoadedService = self.app.state.loaded
        self.app.state.loaded = loaded
        self.app.state.batcher.engine = loaded.engine
        return previous

    # ------------------------------------------------------------------ watching the manifest
    def start_watch(self, interval_s: float) -> None:
        """Check the manifest every ``interval_s`` seconds and reload when it changes."""
        self._task = asyncio.create_task(self._watch(interval_s), name="tributary-index-watch")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            digest = manifest_digest(self.app.state.loaded)
            if not digest or digest in (self.digest, self._failed_digest):
                continue
            try:
                result = await self.reload()
                logger.info(
                    "index watch: now serving %s (%d examples)", result.index_id, result.n_examples
                )
            except (
                ServiceError
            ) as exc:  # keep serving the old index; try again when the manifest changes again
                self._failed_digest = digest
                logger.warning("index watch: not reloading: %s", exc.message)
            except Exception:
                self._failed_digest = digest
                logger.exception("index watch: reload failed; still serving the previous index")
