"""The bad-input list: each hostile request with the statuses it may get, and the run that sends
them and checks every answer (never a 5xx, always the error envelope and a well-formed
request id)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.reliability_server import QA, REQUEST_ID

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


def jsonl_body(*lines: Any) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


_LINE = {"custom_id": "a", "body": QA}
JSONL_HEADERS = {"content-type": "application/jsonl"}
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
        content=jsonl_body(_LINE),
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
        content=jsonl_body(_LINE),
        headers={"content-type": ""},
    ),
    Probe(
        "batch: duplicate custom_id (JSONL)",
        "POST",
        "/v1/batches",
        (400,),
        content=jsonl_body(_LINE, _LINE),
        headers=JSONL_HEADERS,
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
        headers=JSONL_HEADERS,
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
        headers=JSONL_HEADERS,
    ),
    Probe(
        "batch: broken line",
        "POST",
        "/v1/batches",
        (400,),
        content=jsonl_body(_LINE, b"{oops"),
        headers=JSONL_HEADERS,
    ),
    Probe("batch: empty", "POST", "/v1/batches", (400,), content=b"\n\n", headers=JSONL_HEADERS),
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
        content=jsonl_body(_LINE),
        headers={**JSONL_HEADERS, "idempotency-key": "x" * 300},
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
