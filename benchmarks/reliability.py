"""Reliability under hostile input, many tenants and slow clients, against a real
``tributary serve``.

Everything runs against a live server on 127.0.0.1 (the tiny fixture model and a 60-example
index, or ``--index``/``--model``), auth off and auth on (two keys):

* **schemathesis** (``--checks all``, phases coverage, fuzzing and stateful, the prose rules
  taught by :mod:`benchmarks.schemathesis_hooks`): cases generated, failures per check, 5xx;
* the **bad-input list** (:data:`PROBES`): each probe's status is one it must be, never a 5xx,
  always the error envelope and a well-formed request id;
* the **load run**: attributions at a fixed concurrency, status counts, the server's RSS before
  and after;
* ``/healthz`` **latency under floods**: the worst of a 20 ms poll while 1 MB requests, and
  then large batch files, are being sent.

The fast part runs in ``make test`` (``tests/reliability/``); the long run is this script:

    .venv/bin/python benchmarks/reliability.py   # the recorded run (slow on 2 cores)
    .venv/bin/python benchmarks/reliability.py --cases 50 --load 300 --concurrency 16   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "indexer"), str(ROOT / "service"), str(ROOT / "client")]

from tests.service.live_server import (  # noqa: E402
    free_port,
    running_server,
    server_command,
    server_env,
)

KEYS = ("rel-key-one", "rel-key-two")
QA = {"prompt": "What did Alba sell in year 1001?", "response": " Alba sold lanterns."}
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


# --------------------------------------------------------------------------- the server


def _env(**extra: str) -> dict[str, str]:
    return server_env(**{"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **extra})


@dataclass
class Server:
    base: str
    pid: int
    log: Path

    def rss_mib(self) -> float:
        import psutil

        return float(psutil.Process(self.pid).memory_info().rss) / 2**20


@contextlib.contextmanager
def serve(
    index: Path,
    model: Path,
    state_dir: Path,
    keys: tuple[str, ...] = (),
    timeout: float = 120.0,
    **settings: str,
) -> Iterator[Server]:
    """A ``tributary serve`` process on loopback (generation on); SIGTERM, then SIGKILL, at exit."""
    port = free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / f"server-{port}.log"
    env = {"TRIBUTARY_NUM_THREADS": "1", "TRIBUTARY_STATE_DIR": str(state_dir), **settings}
    if keys:
        env["TRIBUTARY_API_KEYS"] = ",".join(keys)
    cmd = server_command(index, model, port, "--enable-generate")
    base = f"http://127.0.0.1:{port}"
    with running_server(cmd, _env(**env), log, base, timeout) as proc:
        yield Server(base, proc.pid, log)


def build_fixture_index(root: Path) -> tuple[Path, Path]:
    """The service tests' index: a tiny random GPT-2 (256 positions) over 60 generated records."""
    from tributary_indexer.build.builder import IndexBuilder
    from tributary_indexer.config import BuildConfig

    from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl

    if (root / "index" / "manifest.json").is_file():
        return root / "index", root / "model"
    root.mkdir(parents=True, exist_ok=True)
    model = build_model_dir(root / "model", "gpt2")
    corpus = write_jsonl(root / "corpus.jsonl", corpus_records(60))
    config = BuildConfig(
        model=str(model),
        corpus=[str(corpus)],
        rank_in=4,
        rank_out=4,
        shard_size=25,
        progress=False,
        damping=0.01,
    )
    IndexBuilder(config, root / "index").build()
    return root / "index", model


def server_errors(base: str) -> int:
    """5xx answers the server has counted (``tributary_requests_total``), whatever the client
    saw."""
    text = httpx.get(base + "/metrics", timeout=10).text
    return int(
        sum(
            float(v)
            for v in re.findall(r'tributary_requests_total\{[^}]*status="5\d\d"[^}]*\} (\S+)', text)
        )
    )


# --------------------------------------------------------------------------- the bad-input list


@dataclass
class Probe:
    """One hostile request and the statuses it may get."""

    name: str
    method: str
    path: str
    expect: tuple[int, ...]
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    authorized: bool = True
    """Send a valid key (when the server has keys)."""
    needs_keys: bool = False
    """Only meaningful on a server with keys."""


def _jsonl(*lines: Any) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


_LINE = {"custom_id": "a", "body": QA}
_JSONL = {"content-type": "application/jsonl"}
_JSON = {"content-type": "application/json"}

PROBES: list[Probe] = [
    # paths and integers
    Probe("example id past int64", "GET", "/v1/examples/9223372036854775808", (400,)),
    Probe("example id int64 max", "GET", "/v1/examples/9223372036854775807", (404,)),
    Probe("example id negative", "GET", "/v1/examples/-1", (400,)),
    Probe("example id float", "GET", "/v1/examples/1.5", (400,)),
    Probe("example id text", "GET", "/v1/examples/abc", (400,)),
    Probe("example id huge", "GET", "/v1/examples/" + "9" * 5000, (400,)),
    Probe("top_k as a string", "POST", "/v1/attributions", (400,), json={**QA, "top_k": "10"}),
    Probe("top_k as a boolean", "POST", "/v1/attributions", (400,), json={**QA, "top_k": True}),
    Probe("top_k fractional", "POST", "/v1/attributions", (400,), json={**QA, "top_k": 2.5}),
    Probe(
        "top_k over the server's limit",
        "POST",
        "/v1/attributions",
        (400,),
        json={**QA, "top_k": 101},
    ),
    Probe("top_k huge", "POST", "/v1/attributions", (400,), json={**QA, "top_k": 10**30}),
    Probe("top_k zero", "POST", "/v1/attributions", (400,), json={**QA, "top_k": 0}),
    Probe(
        "token_wise as a string",
        "POST",
        "/v1/attributions",
        (400,),
        json={**QA, "token_wise": "true"},
    ),
    Probe("verbatim as a number", "POST", "/v1/attributions", (400,), json={**QA, "verbatim": 0.0}),
    Probe("evidence as a string", "POST", "/v1/attributions", (400,), json={**QA, "evidence": "1"}),
    # attribution bodies
    Probe("not JSON", "POST", "/v1/attributions", (400,), content=b"{oops", headers=_JSON),
    Probe("JSON array", "POST", "/v1/attributions", (400,), json=[QA]),
    Probe("empty body", "POST", "/v1/attributions", (400,), content=b"", headers=_JSON),
    Probe("unknown field", "POST", "/v1/attributions", (400,), json={**QA, "topk": 3}),
    Probe(
        "prompt and messages",
        "POST",
        "/v1/attributions",
        (400,),
        json={**QA, "messages": [{"role": "assistant", "content": "x"}]},
    ),
    Probe("no response", "POST", "/v1/attributions", (400,), json={"prompt": "hi"}),
    Probe(
        "blank response",
        "POST",
        "/v1/attributions",
        (400,),
        json={"prompt": "x", "response": "   "},
    ),
    Probe(
        "last message not the assistant's",
        "POST",
        "/v1/attributions",
        (400,),
        json={"messages": [{"role": "user", "content": "hi"}]},
    ),
    Probe(
        "bad role",
        "POST",
        "/v1/attributions",
        (400,),
        json={"messages": [{"role": "god", "content": "hi"}]},
    ),
    Probe(
        "lone surrogate escape",
        "POST",
        "/v1/attributions",
        (400,),
        content=b'{"prompt": "\\ud800", "response": " x y"}',
        headers=_JSON,
    ),
    Probe(
        "invalid UTF-8",
        "POST",
        "/v1/attributions",
        (400,),
        content=b'{"prompt": "\xff\xfe", "response": " x"}',
        headers=_JSON,
    ),
    Probe(
        "NaN",
        "POST",
        "/v1/attributions",
        (400,),
        content=b'{"prompt": "a", "response": " b", "top_k": NaN}',
        headers=_JSON,
    ),
    Probe(
        "deep nesting",
        "POST",
        "/v1/attributions",
        (400,),
        content=b"[" * 100_000 + b"]" * 100_000,
        headers=_JSON,
    ),
    Probe(
        "1 MB prompt",
        "POST",
        "/v1/attributions",
        (400, 413),
        json={"prompt": "word " * 199_990, "response": " x"},
    ),
    Probe(
        "prompt past the context",
        "POST",
        "/v1/attributions",
        (400,),
        json={"prompt": "word " * 400, "response": " x"},
    ),
    Probe(
        "body over the limit (Content-Length)",
        "POST",
        "/v1/attributions",
        (413,),
        content=b" " * 1_100_000,
        headers=_JSON,
    ),
    Probe(
        "filters of the wrong type",
        "POST",
        "/v1/attributions",
        (400,),
        json={**QA, "filters": {"provider": "acme"}},
    ),
    Probe(
        "direction unknown",
        "POST",
        "/v1/attributions",
        (400,),
        json={**QA, "direction": "sideways"},
    ),
    # generation
    Probe("generate: empty prompt", "POST", "/v1/generate", (400,), json={"prompt": ""}),
    Probe(
        "generate: prompt past the context",
        "POST",
        "/v1/generate",
        (400,),
        json={"prompt": "word " * 300},
    ),
    Probe(
        "generate: prompt + max_new_tokens past the context (capped)",
        "POST",
        "/v1/generate",
        (200,),
        json={"prompt": "word " * 60, "max_new_tokens": 4096},
    ),
    Probe(
        "generate: tiny temperature",
        "POST",
        "/v1/generate",
        (200,),
        json={"prompt": "Alba sold", "max_new_tokens": 3, "temperature": 1e-30},
    ),
    Probe(
        "generate: temperature as a string",
        "POST",
        "/v1/generate",
        (400,),
        json={"prompt": "a", "temperature": "1"},
    ),
    Probe(
        "generate: max_new_tokens as a boolean",
        "POST",
        "/v1/generate",
        (400,),
        json={"prompt": "a", "max_new_tokens": True},
    ),
    Probe(
        "generate: negative temperature",
        "POST",
        "/v1/generate",
        (400,),
        json={"prompt": "a", "temperature": -1},
    ),
    Probe(
        "generate: 1 MB prompt",
        "POST",
        "/v1/generate",
        (400, 413),
        json={"prompt": "word " * 199_990},
    ),
    # batches
    Probe(
        "batch: text/plain (cross-site form)",
        "POST",
        "/v1/batches",
        (415,),
        content=_jsonl(_LINE),
        headers={"content-type": "text/plain"},
    ),
    Probe(
        "batch: form-encoded",
        "POST",
        "/v1/batches",
        (415,),
        content=b"a=b",
        headers={"content-type": "application/x-www-form-urlencoded"},
    ),
    Probe(
        "batch: no content type",
        "POST",
        "/v1/batches",
        (415,),
        content=_jsonl(_LINE),
        headers={"content-type": ""},
    ),
    Probe(
        "batch: duplicate custom_id (JSONL)",
        "POST",
        "/v1/batches",
        (400,),
        content=_jsonl(_LINE, _LINE),
        headers=_JSONL,
    ),
    Probe(
        "batch: duplicate custom_id (JSON)",
        "POST",
        "/v1/batches",
        (400,),
        json={"requests": [_LINE, _LINE]},
    ),
    Probe(
        "batch: lone surrogate (JSONL)",
        "POST",
        "/v1/batches",
        (400,),
        content=b'{"custom_id": "s", "body": {"prompt": "\\udc80", "response": " x y"}}\n',
        headers=_JSONL,
    ),
    Probe(
        "batch: lone surrogate in custom_id",
        "POST",
        "/v1/batches",
        (400,),
        content=b'{"requests": [{"custom_id": "\\ud800", "body": {"prompt": "a", "response": " '
        b'b"}}]}',
        headers=_JSON,
    ),
    Probe(
        "batch: invalid UTF-8 (JSONL)",
        "POST",
        "/v1/batches",
        (400,),
        content=b'{"custom_id": "\xff"}\n',
        headers=_JSONL,
    ),
    Probe(
        "batch: broken line",
        "POST",
        "/v1/batches",
        (400,),
        content=_jsonl(_LINE, b"{oops"),
        headers=_JSONL,
    ),
    Probe("batch: empty", "POST", "/v1/batches", (400,), content=b"\n\n", headers=_JSONL),
    Probe(
        "batch: top_k over the limit",
        "POST",
        "/v1/batches",
        (400,),
        json={"requests": [{"custom_id": "a", "body": {**QA, "top_k": 101}}]},
    ),
    Probe(
        "batch: bad idempotency key",
        "POST",
        "/v1/batches",
        (400,),
        content=_jsonl(_LINE),
        headers={**_JSONL, "idempotency-key": "x" * 300},
    ),
    Probe("batch: unknown id", "GET", "/v1/batches/batch_000000000000000000000000", (404,)),
    Probe("batch: id past its bound", "GET", "/v1/batches/" + "b" * 500, (400,)),
    Probe("batch: unknown id results", "GET", "/v1/batches/batch_nope/results", (404,)),
    Probe("batch: cancel unknown", "POST", "/v1/batches/batch_nope/cancel", (404,)),
    Probe("batch: delete unknown", "DELETE", "/v1/batches/batch_nope", (404,)),
    # headers and methods
    Probe(
        "request id with spaces (log forging)",
        "GET",
        "/healthz",
        (200,),
        headers={"x-request-id": "a 200 GET /v1/admin"},
    ),
    Probe("request id too long", "GET", "/healthz", (200,), headers={"x-request-id": "a" * 129}),
    Probe(
        "headers over the limit", "GET", "/v1/index", (431,), headers={"x-padding": "p" * 20_000}
    ),
    Probe(
        "request id of 1 MB", "GET", "/v1/index", (431,), headers={"x-request-id": "r" * 1_000_000}
    ),
    Probe("unknown route", "GET", "/v1/nothing", (404,)),
    Probe("wrong method", "PUT", "/v1/attributions", (405,)),
    Probe("path traversal", "GET", "/static/../../etc/passwd", (404,)),
    # auth (servers with keys)
    Probe("no key", "POST", "/v1/attributions", (401,), json=QA, authorized=False, needs_keys=True),
    Probe(
        "wrong key",
        "GET",
        "/v1/index",
        (401,),
        headers={"authorization": "Bearer nope"},
        authorized=False,
        needs_keys=True,
    ),
    Probe(
        "basic auth",
        "GET",
        "/v1/index",
        (401,),
        headers={"authorization": "Basic YTpi"},
        authorized=False,
        needs_keys=True,
    ),
    Probe("metrics open", "GET", "/metrics", (200,), authorized=False, needs_keys=True),
    Probe("redoc open", "GET", "/redoc", (200,), authorized=False, needs_keys=True),
    Probe("openapi open", "GET", "/openapi.json", (200,), authorized=False, needs_keys=True),
]


@dataclass
class ProbeResult:
    name: str
    status: int
    expected: tuple[int, ...]
    problem: str | None


def run_probes(base: str, key: str | None, probes: list[Probe] | None = None) -> list[ProbeResult]:
    """Send every probe; a problem is a status outside the expected ones, a 5xx, a missing error
    envelope, or an ``x-request-id`` that is not a well-formed token."""
    results = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for probe in probes if probes is not None else PROBES:
            if probe.needs_keys and key is None:
                continue
            headers = dict(probe.headers)
            if key is not None and probe.authorized:
                headers.setdefault("authorization", f"Bearer {key}")
            try:
                response = client.request(
                    probe.method,
                    probe.path,
                    json=probe.json,
                    content=probe.content,
                    headers=headers,
                )
            except httpx.HTTPError as exc:
                results.append(
                    ProbeResult(probe.name, 0, probe.expect, f"no answer: {type(exc).__name__}")
                )
                continue
            problem = None
            if response.status_code not in probe.expect:
                problem = f"status {response.status_code}: {response.text[:300]}"
            elif response.status_code >= 400:
                try:
                    error = response.json()["error"]
                    assert {"message", "type", "param", "code"} <= set(error)
                except Exception:
                    problem = f"no error envelope: {response.text[:200]}"
            request_id = response.headers.get("x-request-id")
            if response.status_code != 431 and (
                request_id is None or not REQUEST_ID.fullmatch(request_id)
            ):
                problem = problem or f"bad x-request-id {request_id!r:.80}"
            if "x-request-id" in probe.headers and request_id == probe.headers["x-request-id"]:
                problem = problem or "a malformed x-request-id was echoed"
            results.append(ProbeResult(probe.name, response.status_code, probe.expect, problem))
    return results


# --------------------------------------------------------------------------- schemathesis


@dataclass
class SchemaRun:
    auth: bool
    cases: int
    failures: dict[str, int]
    errors: int
    exit_code: int
    seconds: float


def run_schemathesis(
    base: str,
    key: str | None,
    max_examples: int,
    seed: int = 1,
    workers: int = 2,
    phases: str = "coverage,fuzzing,stateful",
    max_time: float | None = None,
    timeout: float = 3600,
) -> tuple[SchemaRun, str]:
    """``schemathesis run --checks all`` against the live server; the parsed summary and its
    output."""
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(exe) if exe.exists() else "schemathesis",
        "--config-file",
        str(ROOT / "benchmarks" / "schemathesis.toml"),
        "run",
        base + "/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        str(workers),
        "--phases",
        phases,
        "--no-shrink",
        "--request-timeout",
        "60",
        "--suppress-health-check",
        "too_slow,filter_too_much",
    ]
    if max_time is not None:
        cmd += ["--max-time", str(int(max_time))]
    if key is not None:
        cmd += ["-H", f"Authorization: Bearer {key}"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=_env(SCHEMATHESIS_HOOKS="benchmarks.schemathesis_hooks", NO_COLOR="1"),
    )
    out = proc.stdout + proc.stderr
    cases = sum(int(n) for n in re.findall(r"(\d+) generated", out))
    failures = {name.strip(): int(n) for name, n in re.findall(r"❌ (ST\d+ [^:\n]+): (\d+)", out)}
    errors = sum(int(n) for n in re.findall(r"🚫 [^:\n]+: (\d+)", out))
    return SchemaRun(
        key is not None, cases, failures, errors, proc.returncode, time.perf_counter() - t0
    ), out


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
    body = _jsonl(
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
            base + "/v1/batches", content=body, headers={**headers, **_JSONL}, timeout=300
        )
        response.raise_for_status()
        ids.append(response.json()["id"])

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(n)))
    return ids


# --------------------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--index", type=Path, help="index directory (default: build the fixture index)"
    )
    parser.add_argument("--model", type=Path)
    parser.add_argument(
        "--cases", type=int, default=300, help="schemathesis --max-examples per operation and phase"
    )
    parser.add_argument(
        "--schema-max-time", type=float, default=900, help="seconds per schemathesis run, at most"
    )
    parser.add_argument("--load", type=int, default=5000, help="requests of the load run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--floods", type=int, default=40, help="1 MB requests in the large-request flood"
    )
    parser.add_argument(
        "--batch-lines",
        type=int,
        default=20_000,
        help="lines per batch file in the batch flood (4 files)",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["probes", "schema", "load", "floods"],
        help="parts not to run",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "reliability.json"
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tributary-reliability-"))
    try:
        if args.index is None:
            index, model = build_fixture_index(work / "fixture")
        else:
            index, model = (
                args.index,
                args.model
                or Path(json.loads((args.index / "manifest.json").read_text())["model"]["path"]),
            )
        report: dict[str, Any] = {
            "command": " ".join(
                ["benchmarks/reliability.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "runs": [],
        }
        for keys in ((), KEYS):
            key = keys[0] if keys else None
            label = "auth on" if keys else "auth off"
            run: dict[str, Any] = {"auth": label}
            with serve(index, model, work / f"state-{len(keys)}", keys) as server:
                probes = run_probes(server.base, key) if "probes" not in args.skip else []
                run["probes"] = len(probes)
                run["probe_problems"] = [asdict(p) for p in probes if p.problem]
                print(
                    f"[{label}] bad-input probes: {len(probes)}, problems: "
                    f"{len(run['probe_problems'])}",
                    flush=True,
                )
                if "schema" in args.skip:
                    schema, out = SchemaRun(bool(keys), 0, {}, 0, 0, 0.0), ""
                else:
                    schema, out = run_schemathesis(
                        server.base, key, args.cases, max_time=args.schema_max_time
                    )
                (work / f"schemathesis-{len(keys)}.txt").write_text(out)
                run["schemathesis"] = asdict(schema)
                print(
                    f"[{label}] schemathesis: {schema.cases} cases, failures {schema.failures}, "
                    f"errors {schema.errors} ({schema.seconds:.0f} s)",
                    flush=True,
                )
                if schema.failures or schema.errors:
                    print(out[-6000:], flush=True)
                load = run_load(
                    server, key, args.load if "load" not in args.skip else 0, args.concurrency
                )
                run["load"] = asdict(load)
                print(
                    f"[{label}] load: {load.requests} requests at {load.concurrency}: "
                    f"{load.statuses} in {load.seconds:.0f} s, RSS {load.rss_before_mib:.0f} -> "
                    f"{load.rss_after_mib:.0f} MiB",
                    flush=True,
                )
                if "floods" in args.skip:
                    run["server_5xx"] = server_errors(server.base)
                    report["runs"].append(run)
                    continue
                large: Counter[int] = Counter()
                worst, polls = healthz_worst_ms(
                    server.base,
                    lambda large=large, key=key: large.update(
                        flood_large_requests(server.base, key, args.floods)
                    ),
                )
                run["healthz_during_1mb_flood"] = {
                    "worst_ms": worst,
                    "polls": polls,
                    "statuses": dict(large),
                }
                print(
                    f"[{label}] /healthz during {args.floods} 1 MB requests: worst {worst:.1f} ms "
                    f"over {polls} polls ({dict(large)})",
                    flush=True,
                )
                ids: list[str] = []
                worst, polls = healthz_worst_ms(
                    server.base,
                    lambda ids=ids, key=key: ids.extend(
                        flood_batches(server.base, key, 4, args.batch_lines)
                    ),
                )
                run["healthz_during_batch_flood"] = {
                    "worst_ms": worst,
                    "polls": polls,
                    "batches": len(ids),
                    "lines": args.batch_lines,
                }
                print(
                    f"[{label}] /healthz during 4 batch files of {args.batch_lines} lines: worst "
                    f"{worst:.1f} ms over {polls} polls",
                    flush=True,
                )
                headers = {"authorization": f"Bearer {key}"} if key else {}
                for batch_id in ids:
                    httpx.delete(
                        f"{server.base}/v1/batches/{batch_id}", headers=headers, timeout=60
                    )
                run["server_5xx"] = server_errors(server.base)
                run["rss_end_mib"] = server.rss_mib()
                print(f"[{label}] 5xx counted by the server: {run['server_5xx']}", flush=True)
            report["runs"].append(run)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
        bad = any(
            r["probe_problems"]
            or r["server_5xx"]
            or r["schemathesis"]["failures"]
            or r["schemathesis"]["errors"]
            for r in report["runs"]
        )
        return 1 if bad else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
