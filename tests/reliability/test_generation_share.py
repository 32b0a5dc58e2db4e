"""``/v1/generate`` shares the bounded queue (429 + Retry-After when full) and takes turns with
attributions."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from tributary_client import types
from tributary_service.loading import load_service
from tributary_service.micro_batcher import MicroBatcher, QueueFullError

from benchmarks.reliability import QA


def test_a_generation_flood_delays_an_attribution_by_one_generation(make_settings):
    loaded = load_service(make_settings())
    query = loaded.engine.prepare(types.AttributionRequest(**QA, top_k=1))
    order: list[str] = []

    async def run() -> None:
        batcher = MicroBatcher(loaded.engine, 8192, 0, 64)
        await batcher.start()
        try:

            def generation(i: int):
                def fn() -> int:
                    time.sleep(0.01)
                    order.append(f"g{i}")
                    return i

                return fn

            jobs = [asyncio.ensure_future(batcher.submit_job(generation(i))) for i in range(20)]
            await asyncio.sleep(0)  # the worker picks the first generation
            attribution = asyncio.ensure_future(batcher.submit(query))
            await attribution
            order.append("attribution")
            await asyncio.gather(*jobs)
            with_full_queue = MicroBatcher(loaded.engine, 8192, 0, 2)
            await with_full_queue.start()
            try:
                blocker = [
                    asyncio.ensure_future(with_full_queue.submit_job(generation(100 + i)))
                    for i in range(2)
                ]
                await asyncio.sleep(0)
                try:
                    await asyncio.gather(
                        *(with_full_queue.submit_job(generation(200 + i)) for i in range(3))
                    )
                    raise AssertionError("a full queue took more work")
                except QueueFullError:
                    pass
                await asyncio.gather(*blocker)
            finally:
                await with_full_queue.stop()
        finally:
            await batcher.stop()

    asyncio.run(run())
    assert order.index("attribution") <= 2, (
        order
    )  # behind the generation running and at most one more


def test_a_generate_flood_gets_429s_with_retry_after(small_server):
    """A queue of 2: a flood of 32 generations from 16 clients gets answers and 429s, never a
    5xx."""

    def one(_: int) -> httpx.Response:
        return httpx.post(
            small_server.base + "/v1/generate",
            json={"prompt": "Alba sold", "max_new_tokens": 64},
            timeout=120,
        )

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(one, range(32)))
    statuses = {r.status_code for r in responses}
    assert statuses <= {200, 429} and 429 in statuses and 200 in statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.headers["retry-after"] and limited.json()["error"]["type"] == "rate_limit_error"
    assert (
        httpx.post(small_server.base + "/v1/attributions", json=QA, timeout=60).status_code == 200
    )
