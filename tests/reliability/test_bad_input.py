"""The bad-input list against a real server, and the limits that cannot be skipped: a chunked body
is refused the moment it passes the limit, headers are capped, request ids are tokens."""

from __future__ import annotations

import json
import logging
import socket

import httpx
from fastapi.testclient import TestClient
from tributary_service.app import create_app

from benchmarks.reliability import KEYS, PROBES, QA, run_probes, server_errors


def test_every_bad_input_gets_its_4xx_and_the_server_stays_healthy(keyed_server):
    problems = [p for p in run_probes(keyed_server.base, KEYS[0]) if p.problem]
    assert not problems, problems
    assert len([p for p in PROBES if p.needs_keys]) >= 5 and len(PROBES) >= 60
    assert server_errors(keyed_server.base) == 0
    response = httpx.post(
        keyed_server.base + "/v1/attributions",
        json=QA,
        headers={"authorization": f"Bearer {KEYS[0]}"},
    )
    assert response.status_code == 200


def test_without_keys_the_same_list_holds(open_server):
    problems = [p for p in run_probes(open_server.base, None) if p.problem]
    assert not problems, problems
    assert server_errors(open_server.base) == 0


def _raw(server, head: bytes) -> socket.socket:
    port = int(server.base.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head)
    return sock


def test_a_chunked_body_is_refused_once_it_passes_the_limit(keyed_server):
    """No Content-Length: the body is counted as it streams; 413 and a closed connection long before
    the 20 MB are sent, and the server did not keep them (its RSS grows by far less)."""
    before = keyed_server.rss_mib()
    sock = _raw(
        keyed_server,
        b"POST /v1/attributions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + KEYS[0].encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    sent = 0
    chunk = b"a" * 65536
    try:
        while sent < 20 * 2**20:
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
    except OSError:  # the server closed the connection after answering
        pass
    answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"body_too_large" in answer and b"connection: close" in answer.lower()
    assert sent < 20 * 2**20, "the server read the whole body before refusing it"
    assert keyed_server.rss_mib() - before < 64
    assert httpx.get(keyed_server.base + "/healthz").status_code == 200


def test_huge_headers_get_a_431_without_the_header_coming_back(keyed_server):
    sock = _raw(keyed_server, b"GET /v1/index HTTP/1.1\r\nHost: t\r\nX-Request-Id: ")
    try:
        sock.sendall(b"r" * (20 * 2**20) + b"\r\n\r\n")
    except OSError:
        pass
    answer = sock.recv(65536)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431") and b"rrrrrrrr" not in answer
    assert b"rrrrrrrrrrrrrrrr" not in keyed_server.log.read_bytes()


def test_request_ids_are_tokens_and_raw_header_text_never_reaches_the_log(make_settings, caplog):
    caplog.set_level(logging.INFO, logger="tributary_service.request_context")
    with TestClient(create_app(make_settings(api_keys=[KEYS[0]]))) as c:
        kept = c.get("/healthz", headers={"x-request-id": "trace-42.a:b_c"})
        assert kept.headers["x-request-id"] == "trace-42.a:b_c"
        forged = b"x 200 0.1ms\x85req_fake GET /v1/admin"  # NEL: a line break to some log readers
        for bad in (forged, b"a" * 129, b"", b"id with space"):
            response = c.get("/v1/index", headers={"x-request-id": bad})
            assert response.status_code == 401 and response.headers["x-request-id"].startswith(
                "req_"
            )
            assert not bad or bad.decode("latin-1") not in response.text
        response = c.get("/v1/" + "%0a" + "fake", headers={"authorization": f"Bearer {KEYS[0]}"})
        assert response.status_code == 404
    assert (
        "req_fake" not in caplog.text and "admin" not in caplog.text and "fake" not in caplog.text
    )


def test_400_messages_do_not_leak_library_internals(client):
    answers = [
        client.post(
            "/v1/batches",
            content=b'{"custom_id": 1}\n',
            headers={"content-type": "application/jsonl"},
        ),
        client.post(
            "/v1/batches", content=b"{oops\n", headers={"content-type": "application/jsonl"}
        ),
        client.post(
            "/v1/batches", content=b'{"requests": 3}', headers={"content-type": "application/json"}
        ),
        client.post(
            "/v1/attributions", content=b"{oops", headers={"content-type": "application/json"}
        ),
    ]
    for response in answers:
        assert response.status_code == 400, response.text
        message = response.json()["error"]["message"]
        for leak in (
            "pydantic",
            "https://",
            "Traceback",
            "input_value",
            "json.decoder",
            "For further information",
        ):
            assert leak not in message, message
    assert "line 1" in answers[0].json()["error"]["message"]


def test_batch_caps_and_strict_input(make_settings):
    with TestClient(create_app(make_settings(max_batch_lines=3))) as c:
        four = b"".join(
            json.dumps({"custom_id": f"r{i}", "body": QA}).encode() + b"\n" for i in range(4)
        )
        err = c.post(
            "/v1/batches", content=four, headers={"content-type": "application/x-ndjson"}
        ).json()["error"]
        assert err["code"] == "too_many_requests" and "than 3 request lines" in err["message"]
        err = c.post(
            "/v1/batches", json={"requests": [{"custom_id": f"r{i}", "body": QA} for i in range(4)]}
        ).json()["error"]
        assert err["code"] == "too_many_requests"
        ok = c.post(
            "/v1/batches",
            content=b"".join(four.splitlines(keepends=True)[:3]),
            headers={"content-type": "application/jsonl; charset=utf-8"},
        )
        assert ok.status_code == 200 and ok.json()["request_counts"]["total"] == 3
        refused = c.post("/v1/batches", content=four, headers={"content-type": "text/plain"})
        assert (
            refused.status_code == 415 and "application/jsonl" in refused.json()["error"]["message"]
        )
