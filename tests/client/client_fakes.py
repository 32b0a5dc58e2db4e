"""An in-memory fake Tributary API for ``httpx.MockTransport`` (no network).

Tests against a live server only need a real ``base_url`` instead of ``transport=...``."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from typing import Any

import httpx

BASE_URL = "http://tributary.test"
SOURCES = ["wiki", "books", "code"]
PROVIDERS = ["acme", "globex"]


def envelope(
    status: int,
    message: str,
    type_: str,
    *,
    param: str | None = None,
    code: str | None = None,
    request_id: str = "req-test",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """An error response in the API's envelope."""
    return httpx.Response(
        status,
        json={"error": {"message": message, "type": type_, "param": param, "code": code}},
        headers={"x-request-id": request_id, **(headers or {})},
    )


def fake_attribution(body: dict[str, Any]) -> dict[str, Any]:
    """A deterministic AttributionResponse for a request body."""
    text = body.get("response") or body["messages"][-1]["content"]
    prompt = body.get("prompt") or json.dumps(body.get("messages", [])[:-1])
    h = int(hashlib.sha256((prompt + "\x00" + text).encode()).hexdigest(), 16)
    top_k = body.get("top_k", 10)
    direction = body.get("direction", "helpful")
    examples = []

    def add(i: int, sign: int) -> None:
        example_id = (h >> (i * 3)) % 500 + (0 if sign > 0 else 500)
        score = sign * round((top_k - i) / top_k * (0.5 + (h % 97) / 97), 6)
        ex: dict[str, Any] = {
            "example_id": example_id,
            "record_id": None if example_id % 5 == 0 else f"rec-{example_id}",
            "score": score,
            "direction": "helpful" if sign > 0 else "harmful",
            "text": f"training example {example_id} | about {text[:20]}",
            "source": SOURCES[example_id % 3],
            "provider": None if example_id % 7 == 0 else PROVIDERS[example_id % 2],
        }
        if body.get("token_wise"):
            ex["token_scores"] = [
                {"token": "training", "token_id": 1, "start": 0, "end": 8, "score": score / 2},
                {"token": " example", "token_id": 2, "start": 8, "end": 16, "score": score / 2},
            ]
        examples.append(ex)

    if direction in ("helpful", "both"):
        for i in range(top_k):
            add(i, +1)
    if direction in ("harmful", "both"):
        for i in range(top_k):
            add(i, -1)
    out: dict[str, Any] = {
        "id": f"attr-{h % 10**12:012d}",
        "index_id": "idx-test",
        "score_variant": "relatif",
        "examples": examples,
        "timings": {"gradient_ms": 1.5, "search_ms": 0.5, "total_ms": 2.25},
    }
    if body.get("token_wise"):
        words = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", text)]
        out["response_token_scores"] = [
            {
                "token": w,
                "token_id": 10 + n,
                "start": s,
                "end": e,
                "score": (-1) ** n * (n + 1) / 10,
            }
            for n, (s, e, w) in enumerate(words)
        ]
    return out


class FakeTributary:
    """In-memory API. Knobs: `fail_after` (connection error from the Nth attribution on),
    `reject_marker` (responses containing it get a 400), `on_request` (override hook)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[httpx.Request] = []
        self.attributions = 0
        self.fail_after: int | None = None
        self.reject_marker = "REJECT-ME"
        self.on_request: Callable[[httpx.Request], httpx.Response | None] | None = None
        self.batch_polls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
        if self.on_request is not None:
            hooked = self.on_request(request)
            if hooked is not None:
                return hooked
        path, method = request.url.path, request.method
        if method == "POST" and path == "/v1/attributions":
            with self.lock:
                self.attributions += 1
                n = self.attributions
            if self.fail_after is not None and n > self.fail_after:
                raise httpx.ConnectError("connection refused", request=request)
            body = json.loads(request.content)
            text = body.get("response") or body["messages"][-1]["content"]
            if self.reject_marker in text:
                return envelope(
                    400,
                    "response is too long for the model",
                    "invalid_request_error",
                    param="response",
                    code="too_long",
                )
            return httpx.Response(
                200, json=fake_attribution(body), headers={"x-request-id": f"req-{n}"}
            )
        if method == "GET" and path == "/v1/examples":
            record_id = request.url.params.get("record_id", "")
            if not record_id.startswith("rec-"):
                return envelope(404, f"no example with record_id {record_id!r}", "not_found_error")
            path = f"/v1/examples/{record_id[4:]}"
        if method == "GET" and (m := re.fullmatch(r"/v1/examples/(\d+)", path)):
            example_id = int(m.group(1))
            if example_id >= 1000:
                return envelope(404, f"no example with id {example_id}", "not_found_error")
            return httpx.Response(
                200,
                json={
                    "example_id": example_id,
                    "record_id": f"rec-{example_id}",
                    "file": "part-1.jsonl",
                    "line": 7,
                    "text": f"full text of {example_id}",
                    "source": "wiki",
                    "provider": "acme",
                    "n_tokens": 12,
                    "content_hash": "sha256:abc",
                    "metadata": {"lang": "en"},
                },
            )
        if method == "GET" and path == "/v1/index":
            return httpx.Response(
                200,
                json={
                    "index_id": "idx-test",
                    "format_version": 1,
                    "model": {"name": "gpt2"},
                    "projector": {"kind": "random", "seed": 0},
                    "score_variant": "relatif",
                    "damping": 0.001,
                    "n_examples": 1000,
                    "dim": 4096,
                    "shards": 2,
                    "created_at": "2025-01-01T00:00:00Z",
                    "tokenizer": {"hash": "t0"},
                },
            )
        if method == "POST" and path == "/v1/generate":
            body = json.loads(request.content)
            return httpx.Response(
                200, json={"prompt": body.get("prompt", ""), "response": " four", "n_tokens": 1}
            )
        if path.startswith("/v1/batches"):
            return self._batches(request)
        return envelope(404, f"no route {method} {path}", "not_found_error")

    def _batches(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        counts = {"total": 2, "completed": 0, "failed": 0}
        if request.method == "POST" and path == "/v1/batches":
            body = json.loads(request.content)
            counts["total"] = len(body["requests"])
            return httpx.Response(
                200,
                json={
                    "id": "batch_1",
                    "status": "validating",
                    "created_at": 1,
                    "request_counts": counts,
                    "metadata": body.get("metadata"),
                },
            )
        if path.endswith("/cancel"):
            return httpx.Response(
                200, json={"id": "batch_1", "status": "cancelling", "created_at": 1}
            )
        if path.endswith("/results"):
            lines = [
                {
                    "custom_id": "a",
                    "response": fake_attribution({"prompt": "p", "response": "r", "top_k": 2}),
                },
                {"custom_id": "b", "error": {"message": "bad", "type": "invalid_request_error"}},
            ]
            text = "".join(json.dumps(x) + "\n" for x in lines)
            return httpx.Response(
                200, content=text.encode(), headers={"content-type": "application/x-ndjson"}
            )
        with self.lock:
            self.batch_polls += 1
            polls = self.batch_polls
        status = "in_progress" if polls < 3 else "completed"
        return httpx.Response(
            200,
            json={
                "id": path.rsplit("/", 1)[-1],
                "status": status,
                "created_at": 1,
                "completed_at": 5 if status == "completed" else None,
                "request_counts": counts,
            },
        )
