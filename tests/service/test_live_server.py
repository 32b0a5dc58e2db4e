"""A real uvicorn process on loopback, driven over HTTP by the SDK (sync and async) and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from tributary_client import AsyncClient, Client, NotFoundError, RateLimitError, types

from tests.service.live_server import live_server, server_env

QA = {"prompt": "What did Alba sell in year 1001?", "response": " Alba sold lanterns."}


@pytest.fixture(scope="module")
def server(built_index, tmp_path_factory):
    index, model = built_index
    state = tmp_path_factory.mktemp("live") / "state"
    with live_server(index, model, state, "--enable-generate") as base:
        yield base


def test_sync_client_every_method(server):
    with Client(base_url=server, max_retries=0) as c:
        r = c.attribute(QA["prompt"], QA["response"], top_k=4, token_wise=True)
        assert len(r.examples) == 4 and r.response_token_scores and r.score_variant == "influence"
        m = c.attribute(
            messages=[
                {"role": "user", "content": "Where did Cyra live in year 1002?"},
                {"role": "assistant", "content": "Cyra lived in Mebbe."},
            ],
            top_k=2,
            direction="both",
            provider=["acme"],
        )
        assert {e.direction for e in m.examples} == {"helpful", "harmful"} and {
            e.provider for e in m.examples
        } == {"acme"}
        assert c.get_example(r.examples[0].example_id).text.startswith(r.examples[0].text[:20])
        with pytest.raises(NotFoundError) as err:
            c.get_example(10_000)
        assert err.value.request_id
        assert c.index_info().n_examples == 60
        assert c.generate(prompt="Alba sold", max_new_tokens=3).n_tokens <= 3
        batch = c.create_batch(
            [
                ("a", types.AttributionRequest(**QA, top_k=2)),
                ("b", types.AttributionRequest(**QA, top_k=1)),
            ]
        )
        done = c.wait_for_batch(batch.id, poll_interval=0.05, timeout=60)
        assert done.status == "completed" and done.request_counts.completed == 2
        lines = list(c.iter_batch_results(batch.id))
        assert [line.custom_id for line in lines] == ["a", "b"] and len(
            lines[1].response.examples
        ) == 1
        assert c.get_batch(batch.id).status == "completed"
        assert c.cancel_batch(batch.id).status == "completed"  # finished jobs stay finished


def test_async_client_every_method(server):
    async def run() -> None:
        async with AsyncClient(base_url=server, max_retries=0) as c:
            results = await asyncio.gather(
                *(c.attribute(QA["prompt"], QA["response"], top_k=3) for _ in range(6))
            )
            assert len({tuple(e.example_id for e in r.examples) for r in results}) == 1
            assert (await c.get_example(0)).example_id == 0
            assert (await c.index_info()).shards == 3
            assert (await c.generate(prompt="Borin sold", max_new_tokens=2)).n_tokens <= 2
            batch = await c.create_batch([("x", types.AttributionRequest(**QA))])
            done = await c.wait_for_batch(batch.id, poll_interval=0.05, timeout=60)
            assert done.status == "completed"
            assert [line.custom_id async for line in c.iter_batch_results(batch.id)] == ["x"]
            assert (await c.get_batch(batch.id)).request_counts.total == 1
            big = await c.create_batch(
                [(f"c{i}", types.AttributionRequest(**QA)) for i in range(200)]
            )
            cancelled = await c.cancel_batch(big.id)
            assert cancelled.status in ("cancelling", "cancelled", "completed")
            final = await c.wait_for_batch(big.id, poll_interval=0.05, timeout=60)
            assert final.status in ("cancelled", "completed")

    asyncio.run(run())


def test_micro_batching_groups_concurrent_requests(server):
    with Client(base_url=server, max_retries=0) as c, ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: c.attribute(QA["prompt"], QA["response"], top_k=2), range(32)))
    text = httpx.get(server + "/metrics").text
    counts = dict(re.findall(r'tributary_micro_batch_requests_bucket\{le="([^"]+)"\} (\S+)', text))
    assert float(counts["1.0"]) < float(counts["+Inf"]), (
        counts
    )  # some forward/backward served > 1 request


def test_queue_full_gives_429_with_retry_after(built_index, tmp_path):
    index, model = built_index
    with live_server(
        index,
        model,
        tmp_path / "state",
        TRIBUTARY_QUEUE_SIZE="1",
        TRIBUTARY_BATCH_WINDOW_MS="300",
        TRIBUTARY_MAX_BATCH_TOKENS="16",
    ) as base:

        def call(_: int) -> httpx.Response:
            return httpx.post(base + "/v1/attributions", json=QA, timeout=60)

        # a tiny model answers in milliseconds, so many callers at once keep the one-slot queue full
        with ThreadPoolExecutor(32) as pool:
            responses = list(pool.map(call, range(32)))
        limited = [r for r in responses if r.status_code == 429]
        assert limited and any(r.status_code == 200 for r in responses)
        assert (
            limited[0].headers["retry-after"] == "1"
            and limited[0].json()["error"]["type"] == "rate_limit_error"
        )
        with Client(base_url=base, max_retries=0) as c, ThreadPoolExecutor(12) as pool:
            errors = []

            def sdk(_: int) -> None:
                try:
                    c.attribute(QA["prompt"], QA["response"])
                except RateLimitError as exc:
                    errors.append(exc)

            list(pool.map(sdk, range(12)))
            assert errors and errors[0].request_id


def test_batch_jobs_survive_a_restart(built_index, tmp_path):
    index, model = built_index
    state = tmp_path / "state"
    requests = [(f"r{i}", types.AttributionRequest(**QA, top_k=1)) for i in range(300)]
    with live_server(index, model, state, TRIBUTARY_BATCH_WINDOW_MS="20") as base:
        with Client(base_url=base) as c:
            batch = c.create_batch(requests)
            while c.get_batch(batch.id).request_counts.completed < 20:
                time.sleep(0.05)
    # the server is gone (SIGTERM mid-job); a new one resumes the job from SQLite
    with live_server(index, model, state) as base:
        with Client(base_url=base) as c:
            before = c.get_batch(batch.id).request_counts.completed
            assert before >= 20
            done = c.wait_for_batch(batch.id, poll_interval=0.1, timeout=120)
            assert done.status == "completed" and done.request_counts.completed == 300
            ids = [line.custom_id for line in c.iter_batch_results(batch.id)]
            assert ids == [f"r{i}" for i in range(300)]


def test_cli_batch_of_1000_killed_and_resumed_is_identical(built_index, tmp_path):
    """Byte-identical needs a server that answers a request the same way every time: micro-batching
    pads a request with different company run to run, which moves float32 scores in the last digit
    (~1e-7 relative), so this server runs every request alone (max batch tokens 1)."""
    index, model = built_index
    with live_server(index, model, tmp_path / "state", TRIBUTARY_MAX_BATCH_TOKENS="1") as server:
        _batch_killed_and_resumed(server, tmp_path)


def _batch_killed_and_resumed(server: str, tmp_path) -> None:
    logs = tmp_path / "logs.jsonl"
    shapes = []
    for i in range(1000):
        if i % 3 == 0:
            shapes.append(
                {
                    "id": f"g{i}",
                    "prompt": f"What did Alba sell in year {i}?",
                    "response": " Alba sold lanterns.",
                }
            )
        elif i % 3 == 1:
            shapes.append(
                {
                    "id": f"g{i}",
                    "messages": [
                        {"role": "user", "content": f"Where did Cyra live in year {i}?"},
                        {"role": "assistant", "content": "Cyra lived in Mebbe."},
                    ],
                }
            )
        else:
            shapes.append(
                {
                    "id": f"g{i}",
                    "request": {
                        "messages": [{"role": "user", "content": f"What did Borin sell in {i}?"}]
                    },
                    "response": {
                        "choices": [
                            {"message": {"role": "assistant", "content": "Borin sold copper."}}
                        ]
                    },
                }
            )
    logs.write_text("".join(json.dumps(s) + "\n" for s in shapes))

    def cmd(out: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tributary_client.cli",
            "--base-url",
            server,
            "batch",
            str(logs),
            "-o",
            str(tmp_path / out),
            "--report",
            str(tmp_path / (out + ".report")),
            "--concurrency",
            "8",
            "--top-k",
            "3",
            "--no-progress",
        ]

    subprocess.run(cmd("whole.jsonl"), env=server_env(), check=True, timeout=600)
    proc = subprocess.Popen(cmd("resumed.jsonl"), env=server_env())
    target = tmp_path / "resumed.jsonl"
    while proc.poll() is None and (not target.exists() or target.read_bytes().count(b"\n") < 300):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = target.read_bytes().count(b"\n")
    assert 0 < written < 1000, "killed midway"
    subprocess.run(cmd("resumed.jsonl"), env=server_env(), check=True, timeout=600)
    assert (tmp_path / "resumed.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    for suffix in (".csv", ".md", ".svg"):  # the Markdown links its own chart by name
        resumed = (
            (tmp_path / f"resumed.jsonl.report{suffix}")
            .read_bytes()
            .replace(b"resumed.jsonl", b"whole.jsonl")
        )
        assert resumed == (tmp_path / f"whole.jsonl.report{suffix}").read_bytes()
    assert sum(1 for _ in open(tmp_path / "whole.jsonl")) == 1000
