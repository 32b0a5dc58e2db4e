"""Slow and greedy clients cannot lock the server: half-open connections are evicted oldest first
past the connection cap, headers have a deadline, a stalled body gets a 408."""

from __future__ import annotations

import socket
import time

import httpx


def _connect(server) -> socket.socket:
    port = int(server.base.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _closed(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_half_open_connections_cannot_lock_out_new_clients(small_server):
    """200 connections that never finish their headers, against a cap of 16: a new client is
    served."""
    half_open = []
    for _ in range(200):
        sock = _connect(small_server)
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n"
        )  # no blank line: the headers never end
        half_open.append(sock)
    try:
        with httpx.Client(timeout=10) as client:
            for _ in range(3):
                assert client.get(small_server.base + "/healthz").status_code == 200
        closed = sum(_closed(s, 0.01) for s in half_open[:150])
        assert closed >= 150 - 16, "the oldest half-open connections were not evicted"
    finally:
        for sock in half_open:
            sock.close()


def test_headers_have_a_deadline(small_server):
    sock = _connect(small_server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
    t0 = time.monotonic()
    assert _closed(sock, 15), "a connection that never finished its headers stayed open"
    assert time.monotonic() - t0 < 15
    sock.close()
    # a kept-alive connection gets the same deadline for its next request
    sock = _connect(small_server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    answer = b""
    while not answer.endswith(b'{"status":"ok"}'):  # the whole response, however it was segmented
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    assert _closed(sock, 15)
    sock.close()


def test_a_stalled_body_gets_a_408(small_server):
    sock = _connect(small_server)
    sock.sendall(
        b"POST /v1/attributions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"prompt": '
    )
    sock.settimeout(15)
    answer = b""
    while chunk := sock.recv(4096):  # to the close: headers and body may come in two segments
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"body_timeout" in answer
    assert httpx.get(small_server.base + "/healthz").status_code == 200
