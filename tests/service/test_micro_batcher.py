"""The micro-batcher over a real engine: a lone request never waits the window; company is
batched."""

from __future__ import annotations

import asyncio

from tributary_client import types
from tributary_service.loading import load_service
from tributary_service.micro_batcher import MicroBatcher

REQUEST = types.AttributionRequest(
    prompt="Where is the archive?", response=" The archive is in the north.", top_k=2
)


def test_lone_request_skips_the_window_and_concurrent_requests_share_a_batch(make_settings):
    loaded = load_service(make_settings())
    query = loaded.engine.prepare(REQUEST)
    sizes: list[int] = []

    async def lone() -> None:
        # a 10-minute window: if a lone request waited for company, wait_for would time out
        batcher = MicroBatcher(
            loaded.engine, 8192, 600_000, 16, on_batch=lambda n, _tokens: sizes.append(n)
        )
        await batcher.start()
        try:
            response = await asyncio.wait_for(batcher.submit(query), 60)
            assert response.examples
        finally:
            await batcher.stop()

    async def together() -> None:
        batcher = MicroBatcher(
            loaded.engine, 8192, 200, 16, on_batch=lambda n, _tokens: sizes.append(n)
        )
        await batcher.start()
        try:
            # queued before the worker runs: it sees company and packs all four into one batch
            responses = await asyncio.wait_for(
                asyncio.gather(*(batcher.submit(query) for _ in range(4))), 60
            )
            assert [r.examples[0].example_id for r in responses] == [
                responses[0].examples[0].example_id
            ] * 4
        finally:
            await batcher.stop()

    asyncio.run(lone())
    assert sizes == [1]
    asyncio.run(together())
    assert sizes == [1, 4]


def test_only_the_model_thread_runs_torch_with_several_threads(make_settings, monkeypatch, caplog):
    """The event-loop thread stays at one torch thread (an OpenMP team there throttled the model
    thread's team 2x on 2 cores); the model thread gets ``num_threads``. Started without
    ``tributary serve``'s OpenBLAS setting, the log says how to get it."""
    import torch

    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    before = torch.get_num_threads()
    try:
        loaded = load_service(make_settings(num_threads=2))
        assert torch.get_num_threads() == 1
        assert (
            "OPENBLAS_THREAD_TIMEOUT is not set" in caplog.text and "tributary serve" in caplog.text
        )

        async def run() -> int:
            batcher = MicroBatcher(loaded.engine, 8192, 5, 16, num_threads=2)
            await batcher.start()
            try:
                return int(await batcher.run_in_model_thread(torch.get_num_threads))  # type: ignore[call-overload]
            finally:
                await batcher.stop()

        assert asyncio.run(run()) == 2
    finally:
        torch.set_num_threads(before)
