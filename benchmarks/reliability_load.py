"""Load and floods against a live server: attributions at a fixed concurrency with the server's
RSS before and after, and the worst ``/healthz`` latency while large requests and batch files
are being sent."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from benchmarks.reliability_probes import JSONL_HEADERS, jsonl_body
from benchmarks.reliability_server import Server

# --------------------------------------------------------------------------- load and floods


@dataclass
class LoadRun:
    requests: int
    concurrency: int
    statuses: dict[int, int]
    seconds: float
    rss_before_mib: float
    rss_after_mib: float
    client_errors: dict[str, int] = field(default_factory=dict)
    """Transport errors the client saw (status 0), by type."""


def run_load(server: Server, key: str | None, requests: int, concurrency: int) -> LoadRun:
    """``requests`` attributions at ``concurrency`` (varied prompts, some token-wise and
    two-sided)."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()

    async def run() -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=server.base, timeout=120, limits=limits, headers=headers
        ) as client:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(requests):
                queue.put_nowait(i)

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    body = {
                        "prompt": f"What did Alba sell in year {1000 + i % 97}?",
                        "response": " Alba sold lanterns.",
                        "top_k": 1 + i % 10,
                        "direction": ("helpful", "harmful", "both")[i % 3],
                        "token_wise": i % 7 == 0,
                    }
                    try:
                        response = await client.post("/v1/attributions", json=body)
                        statuses[response.status_code] += 1
                    except httpx.HTTPError as exc:
                        statuses[0] += 1
                        errors[type(exc).__name__] += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    before = server.rss_mib()
    t0 = time.perf_counter()
    asyncio.run(run())
    return LoadRun(
        requests,
        concurrency,
        dict(statuses),
        time.perf_counter() - t0,
        before,
        server.rss_mib(),
        dict(errors),
    )


_POLLER = """
import json, sys, time, http.client
host, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
latencies = []
while sys.stdin.readline() == "poll\\n":
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    conn.close()
    latencies.append((time.perf_counter() - t0) * 1000)
    print(json.dumps(latencies[-1]), flush=True)
"""


def healthz_worst_ms(
    base: str, flood: Callable[[], None], interval: float = 0.02
) -> tuple[float, int]:
    """Run ``flood`` while another process polls ``/healthz`` every ``interval`` s on a fresh
    connection each time (so the flood's own client work cannot delay the poll); the worst
    latency (ms) and the number of polls."""
    host, port = base.removeprefix("http://").split(":")
    poller = subprocess.Popen(
        [sys.executable, "-c", _POLLER, host, port, str(interval)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert poller.stdin is not None and poller.stdout is not None
    latencies: list[float] = []
    done = threading.Event()

    def drive() -> None:
        while not done.is_set():
            poller.stdin.write("poll\n")  # type: ignore[union-attr]
            poller.stdin.flush()  # type: ignore[union-attr]
            latencies.append(float(poller.stdout.readline()))  # type: ignore[union-attr]
            time.sleep(interval)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        flood()
    finally:
        done.set()
        driver.join()
        poller.stdin.close()
        poller.wait(timeout=60)
    return max(latencies, default=0.0), len(latencies)


def flood_large_requests(
    base: str, key: str | None, n: int, concurrency: int = 4, size: int = 1_000_000
) -> Counter[int]:
    """``n`` requests with a ~``size``-byte prompt (attributions and generations)."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    prompt = "word " * (size // 5 - 20)
    statuses: Counter[int] = Counter()

    def one(i: int) -> None:
        path, body = (
            ("/v1/attributions", {"prompt": prompt, "response": " x"})
            if i % 2
            else ("/v1/generate", {"prompt": prompt})
        )
        statuses[httpx.post(base + path, json=body, headers=headers, timeout=120).status_code] += 1

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    return statuses


def flood_batches(base: str, key: str | None, n: int, lines: int) -> list[str]:
    """``n`` JSONL batch files of ``lines`` lines each, two at a time; the created ids."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = jsonl_body(
        *(
            {
                "custom_id": f"r{i}",
                "body": {
                    "prompt": f"What did Alba sell in year {i}?",
                    "response": " Alba sold lanterns.",
                    "top_k": 1,
                },
            }
            for i in range(lines)
        )
    )
    ids: list[str] = []

    def one(_: int) -> None:
        response = httpx.post(
            base + "/v1/batches", content=body, headers={**headers, **JSONL_HEADERS}, timeout=300
        )
        response.raise_for_status()
        ids.append(response.json()["id"])

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(n)))
    return ids
