"""Slow and greedy clients: uvicorn's HTTP protocol with a header deadline, a header size cap and
a connection cap that sheds half-open connections first.

uvicorn bounds idle keep-alive connections (``keep_alive_s``) and can refuse requests past a
concurrency limit, but it waits forever for a request's headers and reads headers of any size.
So a client that opens thousands of connections and sends a byte now and then (slowloris)
would hold every slot. :func:`guarded_protocol` returns uvicorn's httptools protocol with:

* a **header deadline**: a connection must complete a request's headers within
  ``header_timeout_s`` of opening (or of its previous response), or it is closed;
* a **header cap**: a request line and headers over ``max_header_bytes`` get a 431 and the
  connection is closed, counted while they arrive (never buffered past the cap and one read);
* a **connection cap** of ``max_connections``: a new connection past it closes the oldest
  connection still waiting for its headers, so half-open connections cannot lock out new
  clients; when none is waiting, uvicorn's ``limit_concurrency`` answers 503.

Body stalls are the middleware's (:mod:`.request_context`, ``body_timeout_s``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import ServiceSettings

logger = logging.getLogger(__name__)


class _HeadRejected(Exception):
    """Stops the parser after a 431 was sent."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header cap and half-open eviction."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 16_384
    max_connections: int = 1000
    waiting: collections.OrderedDict[GuardedHttpProtocol, None]
    """Connections waiting for a request's headers, oldest first (one registry per protocol
    class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._raw_head_bytes = 0
        self._head_bytes = 0
        self._rejected = False

    # ---------------------------------------------------------------- the header deadline
    def _await_head(self) -> None:
        self._raw_head_bytes = 0
        self.waiting[self] = None
        self.waiting.move_to_end(self)
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _head_arrived(self) -> None:
        self.waiting.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self.waiting.pop(self, None)
        if not self.transport.is_closing():
            self.transport.close()

    # ---------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._evict_one()
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def _evict_one(self) -> None:
        for other in self.waiting:
            if other is not self:
                self.waiting.pop(other)
                logger.warning(
                    "%d connections open, the limit: closing the oldest one still waiting for its "
                    "headers",
                    len(self.connections),
                )
                other.transport.close()
                return

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        waiting = self in self.waiting
        try:
            super().data_received(data)
        except _HeadRejected:
            return
        if waiting and self in self.waiting:  # this whole read was head: count it while it arrives
            self._raw_head_bytes += len(data)
            if self._raw_head_bytes > self.max_header_bytes:
                self._reject_head(self._raw_head_bytes)

    def send_400_response(self, msg: str) -> None:
        if not self._rejected:
            super().send_400_response(msg)

    # ---------------------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_arrived()
        if self._head_bytes > self.max_header_bytes:
            self._reject_head(self._head_bytes)
            raise _HeadRejected
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._await_head()  # the next request's headers are due within the deadline too

    def _reject_head(self, size: int) -> None:
        self._rejected = True
        self._head_arrived()
        body = (
            b'{"error": {"message": "the request headers are over this server\'s limit of '
            + str(self.max_header_bytes).encode()
            + b' bytes; fix: send shorter headers", "type": '
            b'"invalid_request_error", "param": null, "code": "headers_too_large"}}'
        )
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )
        self.transport.close()


def guarded_protocol(settings: ServiceSettings) -> type[GuardedHttpProtocol]:
    """A :class:`GuardedHttpProtocol` class configured from ``settings`` (its own registry)."""
    return type(
        "ConfiguredHttpProtocol",
        (GuardedHttpProtocol,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "max_header_bytes": settings.max_header_bytes,
            "max_connections": settings.max_connections,
            "waiting": collections.OrderedDict(),
        },
    )


def uvicorn_options(settings: ServiceSettings) -> dict[str, Any]:
    """The ``uvicorn.run`` keyword arguments for the connection settings."""
    return {
        "http": guarded_protocol(settings),
        "timeout_keep_alive": settings.keep_alive_s,
        # past the cap plus eviction headroom, requests get uvicorn's 503 rather than a hang
        "limit_concurrency": settings.max_connections + 64,
        "backlog": min(2048, settings.max_connections * 2),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
