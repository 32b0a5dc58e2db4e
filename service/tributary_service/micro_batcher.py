"""Micro-batching: concurrent requests that arrive within a short window share one
forward/backward (bounded by padded tokens), on one model thread; a bounded queue sheds load.

The model is not thread-safe and a CPU/GPU does better with one larger batch than with many
small ones, so every attribution (interactive or from a batch job) goes through one worker:
it takes the first waiting request, waits up to ``window_ms`` for more, packs them while the
padded batch stays within ``max_batch_tokens``, and runs the engine in a dedicated thread.

The window is only waited when there is company to wait for: another request already queued,
or a previous batch that held more than one. A lone client (concurrency 1) never pays it; under
load, requests arriving while a batch runs queue up and the window gathers the stragglers.

Generations (``POST /v1/generate``) run on the same model thread and wait in the same bounded
queue (``queue_size`` counts both, so a flood of either gets 429s). The worker alternates: after
a generation, waiting attributions get the next turn, so a generation flood delays an
attribution by at most one generation, not by the whole flood.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tributary_client import types

from .background import cancel_and_wait
from .engine import AttributionEngine, PreparedQuery

logger = logging.getLogger(__name__)


class QueueFullError(Exception):
    """More requests are waiting than the queue holds (HTTP 429)."""


@dataclass
class _Item:
    query: PreparedQuery
    future: asyncio.Future[types.AttributionResponse]


@dataclass
class _Job:
    fn: Callable[[], Any]
    future: asyncio.Future[Any]


class MicroBatcher:
    """Collects prepared queries into padded batches for :meth:`AttributionEngine.attribute`."""

    def __init__(
        self,
        engine: AttributionEngine,
        max_batch_tokens: int,
        window_ms: float,
        queue_size: int,
        on_batch: Callable[[int, int], None] | None = None,
        num_threads: int | None = None,
    ):
        self.engine = engine
        self.max_batch_tokens = max_batch_tokens
        self.window_s = window_ms / 1000.0
        self.queue_size = queue_size
        self.on_batch = on_batch  # (n_requests, padded_tokens) -> None, for metrics
        self._queue: asyncio.Queue[_Item] | None = None
        self._jobs: collections.deque[_Job] = collections.deque()
        self._work: asyncio.Event | None = None
        self._carry: _Item | None = None
        self._last_batch_size = 0
        self._task: asyncio.Task[None] | None = None
        # torch's intra-op thread count is per calling thread: set it in the model thread itself
        init = (lambda: torch.set_num_threads(num_threads)) if num_threads else None
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tributary-model", initializer=init
        )

    @property
    def depth(self) -> int:
        return (
            (self._queue.qsize() if self._queue else 0)
            + (1 if self._carry else 0)
            + len(self._jobs)
        )

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._work = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="tributary-micro-batcher")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, query: PreparedQuery) -> types.AttributionResponse:
        """Queue one query and wait for its answer; :class:`QueueFullError` when saturated."""
        assert self._queue is not None, "MicroBatcher.start() was not awaited"
        future: asyncio.Future[types.AttributionResponse] = (
            asyncio.get_running_loop().create_future()
        )
        if self.depth >= self.queue_size:
            raise QueueFullError(f"{self.queue_size} requests are already waiting")
        self._queue.put_nowait(_Item(query, future))
        assert self._work is not None
        self._work.set()
        return await future

    async def submit_job(self, fn: Callable[[], Any]) -> Any:
        """Queue other model work (a generation) in the same bounded queue; it runs on the model
        thread, taking turns with attribution batches. :class:`QueueFullError` when saturated."""
        if self.depth >= self.queue_size:
            raise QueueFullError(f"{self.queue_size} requests are already waiting")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(fn, future))
        assert self._work is not None
        self._work.set()
        return await future

    async def run_in_model_thread(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the model thread now, outside the queue (for setup and tests)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def _fits(self, batch: list[_Item], item: _Item) -> bool:
        width = max([i.query.n_tokens for i in batch] + [item.query.n_tokens])
        return width * (len(batch) + 1) <= self.max_batch_tokens

    async def _next_batch(self) -> list[_Item]:
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        batch = [first]
        loop = asyncio.get_running_loop()
        company = self._last_batch_size > 1 or not self._queue.empty()
        deadline = loop.time() + (self.window_s if company else 0.0)
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if item.future.done():  # the client went away
                continue
            if not self._fits(batch, item):
                self._carry = item
                break
            batch.append(item)
        return [i for i in batch if not i.future.done()]

    async def _run(self) -> None:
        assert self._queue is not None and self._work is not None
        job_turn = False  # whose turn it is when both kinds wait
        while True:
            attributions_waiting = self._carry is not None or not self._queue.empty()
            if self._jobs and (job_turn or not attributions_waiting):
                await self._run_job(self._jobs.popleft())
                job_turn = False
            elif attributions_waiting:
                await self._run_batch()
                job_turn = True
            else:
                self._work.clear()
                await self._work.wait()

    async def _run_job(self, job: _Job) -> None:
        if job.future.done():  # the client went away
            return
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, job.fn)
        except Exception as exc:  # a 4xx raised by the job, or a failure: the caller's to report
            if not job.future.done():
                job.future.set_exception(exc)
            return
        if not job.future.done():
            job.future.set_result(result)

    async def _run_batch(self) -> None:
        loop = asyncio.get_running_loop()
        batch = await self._next_batch()
        self._last_batch_size = len(batch)
        if not batch:
            return
        queries = [i.query for i in batch]
        if self.on_batch:
            self.on_batch(len(batch), max(q.n_tokens for q in queries) * len(batch))
        try:
            results = await loop.run_in_executor(self.executor, self.engine.attribute, queries)
        except Exception as exc:  # one bad batch must not kill the worker
            logger.exception("attribution batch of %d failed", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, result in zip(batch, results):
            if not item.future.done():
                item.future.set_result(result)
