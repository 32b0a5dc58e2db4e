"""What the sync and async clients share: configuration, request building, retry policy,
response parsing, and one `RequestSpec` builder per endpoint.

Every public client method does two things: ask `_BaseClient` for the endpoint's
`RequestSpec` (built here, once, for both clients) and hand it to `_request`/`_stream`, whose
sync and async versions differ only in how they send and how they sleep. The decisions
(retry or not, how long to wait, which exception, how to parse) are methods of this class.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    RequestValidationError,
    make_status_error,
)
from ._version import __version__
from .types import (
    AttributionRequest,
    AttributionResponse,
    Batch,
    BatchCreateRequest,
    BatchRequestLine,
    BatchResultLine,
    ChatMessage,
    Direction,
    Example,
    GenerateRequest,
    GenerateResponse,
    IndexInfo,
    RemovalRequest,
    RemovalResponse,
)

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
RETRYABLE_STATUSES = frozenset({408, 409, 429})

ModelT = TypeVar("ModelT", bound=BaseModel)
HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)
ClientT = TypeVar("ClientT", bound="_BaseClient[Any]")

MessagesArg = Sequence[ChatMessage | Mapping[str, Any]]
BatchRequestsArg = Iterable[BatchRequestLine | tuple[str, AttributionRequest] | Mapping[str, Any]]


@dataclass(frozen=True)
class RequestSpec(Generic[ModelT]):
    """One API call, described once and sent by either client.

    `cast_to` is the pydantic model of the response body, or of each line when `jsonl`.
    """

    method: str
    path: str
    cast_to: type[ModelT]
    json: Any = None
    params: Mapping[str, Any] | None = None
    jsonl: bool = False
    idempotency_key: str | None = None


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return list(value)


def _dump(model: BaseModel) -> Any:
    return model.model_dump(mode="json", exclude_none=True)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, ``Retry-After`` as seconds
    or as an HTTP-date), or None when absent or unreadable."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


def make_attribution_request(
    prompt: str | None = None,
    response: str | None = None,
    *,
    messages: MessagesArg | None = None,
    top_k: int = 10,
    direction: Direction = "helpful",
    token_wise: bool = False,
    source: str | Sequence[str] | None = None,
    provider: str | Sequence[str] | None = None,
    verbatim: bool = True,
    evidence: bool = False,
) -> AttributionRequest:
    """Build (and validate) the `AttributionRequest` that `Client.attribute` sends.

    Raises `RequestValidationError` with a message that says what to fix."""
    filters = None
    if source is not None or provider is not None:
        filters = {"source": _as_list(source), "provider": _as_list(provider)}
    body: dict[str, Any] = {
        "prompt": prompt,
        "response": response,
        "messages": _messages(messages),
        "top_k": top_k,
        "direction": direction,
        "token_wise": token_wise,
        "filters": filters,
    }
    # sent only when they differ from the defaults, so a server from before these options accepts
    # the request
    body.update({"verbatim": None if verbatim else False, "evidence": True if evidence else None})
    return _validated(AttributionRequest, body)


def _validated(model: type[ModelT], data: Any) -> ModelT:
    """``model.model_validate(data)``, refusals raised as the SDK's `RequestValidationError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError.from_pydantic(exc) from None


class _BaseClient(Generic[HttpT]):
    """Configuration and everything that does not depend on sync vs async I/O."""

    base_url: str
    api_key: str | None
    timeout: httpx.Timeout
    max_retries: int
    _http: HttpT
    _owns_http: bool

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        http_client: HttpT | None = None,
        max_retry_after: float = MAX_RETRY_AFTER,
    ) -> None:
        """Configuration only; subclasses set up `_http` (using `http_client` if given)."""
        url = base_url or os.environ.get("TRIBUTARY_BASE_URL") or DEFAULT_BASE_URL
        if not url.startswith(("http://", "https://")):
            raise RequestValidationError(
                f"base_url must start with http:// or https://, got {url!r}", param="base_url"
            )
        self.base_url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("TRIBUTARY_API_KEY")
        if timeout is None:
            self.timeout = DEFAULT_TIMEOUT
        elif isinstance(timeout, httpx.Timeout):
            self.timeout = timeout
        else:
            self.timeout = httpx.Timeout(float(timeout), connect=min(5.0, float(timeout)))
        if max_retries < 0:
            raise RequestValidationError("max_retries must be >= 0", param="max_retries")
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self.default_headers = dict(default_headers or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, max_retries={self.max_retries})"

    def with_options(
        self: ClientT,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> ClientT:
        """A copy with some options changed; it shares (and does not own) the HTTP pool."""
        copy = type(self)(
            base_url=base_url or self.base_url,
            api_key=api_key if api_key is not None else self.api_key,
            timeout=timeout if timeout is not None else self.timeout,
            max_retries=self.max_retries if max_retries is None else max_retries,
            default_headers={**self.default_headers, **(default_headers or {})},
            http_client=self._http,
            max_retry_after=self.max_retry_after,
        )
        copy._owns_http = False
        return copy

    # ------------------------------------------------------------------ requests

    def _headers(
        self, spec: RequestSpec[Any], retries_taken: int, idem_key: str | None
    ) -> dict[str, str]:
        headers = {
            "accept": "application/x-ndjson" if spec.jsonl else "application/json",
            "user-agent": f"tributary-client/{__version__}",
        }
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        if idem_key:
            headers["idempotency-key"] = idem_key
        if retries_taken:
            headers["x-retry-count"] = str(retries_taken)
        headers.update(self.default_headers)
        return headers

    def _idempotency_key(self, spec: RequestSpec[Any]) -> str | None:
        """Stable across the retries of one call, so a server can drop duplicate POSTs."""
        if spec.method == "GET":
            return None
        return spec.idempotency_key or f"tributary-{uuid.uuid4().hex}"

    def _build_request(
        self, spec: RequestSpec[Any], retries_taken: int, idem_key: str | None
    ) -> httpx.Request:
        return self._http.build_request(
            spec.method,
            self.base_url + spec.path,
            json=spec.json,
            params=dict(spec.params) if spec.params else None,
            headers=self._headers(spec, retries_taken, idem_key),
            timeout=self.timeout,
        )

    # ------------------------------------------------------------------ retry policy

    def _backoff(self, retries_taken: int) -> float:
        delay = min(INITIAL_RETRY_DELAY * 2.0**retries_taken, MAX_RETRY_DELAY)
        return delay * (1.0 - 0.25 * random.random())  # jitter: spread synchronized clients

    def _delay_after_status(self, response: httpx.Response, retries_taken: int) -> float | None:
        """Seconds to wait before retrying this error response, or None to give up."""
        if retries_taken >= self.max_retries:
            return None
        should = response.headers.get("x-should-retry")
        if should == "false":
            return None
        status = response.status_code
        if should != "true" and status not in RETRYABLE_STATUSES and status < 500:
            return None
        retry_after = parse_retry_after(response.headers)
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return self._backoff(retries_taken)

    def _delay_after_exception(self, exc: httpx.RequestError, retries_taken: int) -> float | None:
        """Seconds to wait before retrying after a transport failure, or None to give up."""
        if retries_taken >= self.max_retries or not isinstance(exc, httpx.TransportError):
            return None
        return self._backoff(retries_taken)

    def _connection_error(self, exc: httpx.RequestError, spec: RequestSpec[Any]) -> APIError:
        where = f"{spec.method} {self.base_url}{spec.path}"
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"request timed out: {where} ({type(exc).__name__})")
        detail = str(exc) or type(exc).__name__
        return APIConnectionError(f"cannot reach the Tributary API at {where}: {detail}")

    def _log_retry(
        self, spec: RequestSpec[Any], retries_taken: int, delay: float, why: str
    ) -> None:
        logger.info(
            "retrying %s %s in %.2fs (retry %d/%d): %s",
            spec.method,
            spec.path,
            delay,
            retries_taken + 1,
            self.max_retries,
            why,
        )

    # ------------------------------------------------------------------ parsing

    def _parse(self, spec: RequestSpec[ModelT], response: httpx.Response) -> ModelT:
        try:
            data = response.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._invalid_body(spec, response, f"body is not JSON ({exc})") from exc
        try:
            parsed = spec.cast_to.model_validate(data)
        except ValidationError as exc:
            raise self._invalid_body(spec, response, _summarize(exc)) from exc
        return _with_request_id(parsed, response)

    def _parse_line(
        self, spec: RequestSpec[ModelT], response: httpx.Response, line: str, line_no: int
    ) -> ModelT:
        try:
            parsed = spec.cast_to.model_validate_json(line)
        except ValidationError as exc:
            raise self._invalid_body(spec, response, f"line {line_no}: {_summarize(exc)}") from exc
        return _with_request_id(parsed, response)

    def _invalid_body(self, spec: RequestSpec[Any], response: httpx.Response, why: str) -> APIError:
        return APIResponseValidationError(
            f"unexpected response from {spec.method} {spec.path}: {why}",
            request_id=response.headers.get("x-request-id"),
            status_code=response.status_code,
        )

    def _status_error(self, response: httpx.Response) -> APIError:
        return make_status_error(response)

    # ------------------------------------------------------------------ endpoint specs

    def _attribute_spec(self, request: AttributionRequest) -> RequestSpec[AttributionResponse]:
        return RequestSpec("POST", "/v1/attributions", AttributionResponse, json=_dump(request))

    _build_attribution_request = staticmethod(make_attribution_request)

    def _get_example_spec(self, example_id: int) -> RequestSpec[Example]:
        if isinstance(example_id, bool) or not isinstance(example_id, int):
            raise RequestValidationError(
                f"example_id must be an int, got {example_id!r}", param="example_id"
            )
        return RequestSpec("GET", f"/v1/examples/{example_id}", Example)

    def _find_example_spec(self, record_id: str) -> RequestSpec[Example]:
        if not isinstance(record_id, str) or not record_id:
            raise RequestValidationError(
                f"record_id must be a non-empty string, got {record_id!r}", param="record_id"
            )
        return RequestSpec("GET", "/v1/examples", Example, params={"record_id": record_id})

    def _removal_spec(
        self,
        record_ids: Sequence[str] | None,
        provider: str | None,
        source: str | None,
        reason: str | None,
    ) -> RequestSpec[RemovalResponse]:
        body = _validated(
            RemovalRequest,
            {
                "record_ids": list(record_ids) if record_ids is not None else None,
                "provider": provider,
                "source": source,
                "reason": reason,
            },
        )
        return RequestSpec("POST", "/v1/admin/removals", RemovalResponse, json=_dump(body))

    def _index_info_spec(self) -> RequestSpec[IndexInfo]:
        return RequestSpec("GET", "/v1/index", IndexInfo)

    def _generate_spec(
        self,
        prompt: str | None,
        messages: MessagesArg | None,
        max_new_tokens: int,
        temperature: float,
        stop: Sequence[str] | None = None,
    ) -> RequestSpec[GenerateResponse]:
        body = _validated(
            GenerateRequest,
            {
                "prompt": prompt,
                "messages": _messages(messages),
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "stop": None if stop is None else list(stop),
            },
        )
        return RequestSpec("POST", "/v1/generate", GenerateResponse, json=_dump(body))

    def _create_batch_spec(
        self, requests: BatchRequestsArg, metadata: Mapping[str, Any] | None
    ) -> RequestSpec[Batch]:
        lines: list[Any] = []
        for item in requests:
            if isinstance(item, tuple):
                lines.append({"custom_id": item[0], "body": item[1]})
            else:
                lines.append(item)
        body = _validated(
            BatchCreateRequest,
            {"requests": lines, "metadata": dict(metadata) if metadata else None},
        )
        return RequestSpec("POST", "/v1/batches", Batch, json=_dump(body))

    def _get_batch_spec(self, batch_id: str) -> RequestSpec[Batch]:
        return RequestSpec("GET", f"/v1/batches/{_path_id(batch_id)}", Batch)

    def _cancel_batch_spec(self, batch_id: str) -> RequestSpec[Batch]:
        return RequestSpec("POST", f"/v1/batches/{_path_id(batch_id)}/cancel", Batch)

    def _batch_results_spec(self, batch_id: str) -> RequestSpec[BatchResultLine]:
        return RequestSpec(
            "GET", f"/v1/batches/{_path_id(batch_id)}/results", BatchResultLine, jsonl=True
        )

    @staticmethod
    def _poll_delay(
        batch: Batch, deadline: float | None, poll_interval: float, timeout: float | None
    ) -> float:
        """How long `wait_for_batch` sleeps before the next poll; TimeoutError when over."""
        if deadline is None:
            return poll_interval
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"batch {batch.id} is still {batch.status!r} after {timeout:g} s "
                f"({batch.request_counts.completed + batch.request_counts.failed}/"
                f"{batch.request_counts.total} requests done)"
            )
        return min(poll_interval, remaining)


def _messages(messages: MessagesArg | None) -> list[Any] | None:
    if messages is None:
        return None
    return [m.model_dump() if isinstance(m, ChatMessage) else dict(m) for m in messages]


def _path_id(value: str) -> str:
    text = str(value)
    if not text:
        raise RequestValidationError("id must not be empty", param="batch_id")
    return quote(text, safe="")


def _with_request_id(parsed: ModelT, response: httpx.Response) -> ModelT:
    """Attach the response's ``x-request-id`` to the parsed object (its ``request_id``)."""
    request_id = response.headers.get("x-request-id")
    if request_id is not None and hasattr(parsed, "_request_id"):
        parsed._request_id = request_id
    return parsed


def _summarize(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)
    loc = ".".join(str(p) for p in errors[0]["loc"])
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc or 'body'}: {errors[0]['msg']}{more}"


def json_line(model: BaseModel) -> bytes:
    """Serialise a model as one JSONL line (compact, ends with a newline)."""
    return model.model_dump_json().encode("utf-8") + b"\n"
