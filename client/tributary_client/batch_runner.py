"""Attribute every generation of a logs file, resumably, into a JSONL results file.

Guarantees of `run_batch`:

* **Deterministic order.** Results are written in the order of the logs file, whatever order
  the concurrent requests finish in (finished-early results wait in a bounded window). So the
  output is always a prefix of the complete output, and a run that is killed and resumed
  produces the same file as one that never stopped (given a server that answers the same
  request the same way).
* **Resumable.** On start, the existing output is read; a torn last line (no trailing
  newline: the process died mid-write) is truncated away; the custom_ids already present are
  skipped. Each line goes out in one write followed by a flush; the file is fsynced at the end.
* **No duplicates.** An id is written at most once.
* **Reproducible lines.** Server-side stage timings vary from run to run, so they are zeroed
  in the written lines (``keep_timings=True``  keeps them); attribution ids are content-derived
  by the server.

**Failed lines.** A line that cannot be attributed is recorded in the output as an error line
(``{"custom_id", "error": {"message", "type", "param", "code"}}``) and the run goes on:

* a line of the logs that is unusable (``code`` ``invalid_json``, ``invalid_log_line`` such as
  an empty assistant reply, or ``duplicate_id``); the message names the file and the line;
* a request the server refuses as invalid (400/413/422: ``code`` from the server, e.g.
  ``tokenization_failed`` for chat messages to a model without a chat template).

A rerun keeps recorded failures; ``retry_failed=True`` re-attempts them (after you fixed the
logs line or the server) and puts each new result where the failed line was, so the output
stays in input order. Retried results go to ``<out>.retry`` first and replace the failed lines
in one atomic rename; a retry that is killed resumes like any run.

Anything else — connection failures, timeouts, rate limits and 5xx after the client's
retries, authentication, a 404 route — stops the run with the exception: it concerns every
line, so fix the cause and run again; it resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from ._base_client import json_line
from ._client import Client
from ._exceptions import APIError, BadRequestError
from .logs import LogLine, iter_log_lines
from .types import (
    AttributionFilters,
    AttributionRequest,
    BatchResultLine,
    Direction,
    ErrorBody,
    StageTimings,
)

logger = logging.getLogger(__name__)

__all__ = ["BatchRunSummary", "FailedLine", "read_done_ids", "read_results", "run_batch"]

_LINE_ERROR_STATUSES = frozenset({400, 413, 422})
"""HTTP statuses that concern one request only: recorded as a failed line, the run goes on."""


@dataclass(frozen=True)
class FailedLine:
    """A failed line of a results file: its id and the recorded error."""

    custom_id: str
    error: ErrorBody

    @property
    def reason(self) -> str:
        """The error's code (e.g. ``invalid_log_line``, ``tokenization_failed``), else its type."""
        return self.error.code or self.error.type


@dataclass(frozen=True)
class BatchRunSummary:
    """What one `run_batch` call did, and what the results file holds afterwards."""

    total: int
    """Generations (non-blank lines) in the logs file."""
    skipped: int
    """Lines already in the results file before this run (attributed or failed)."""
    succeeded: int
    """Lines this run attributed (retried ones included)."""
    failed: int
    """Lines this run recorded as failed (retried ones that failed again included)."""
    out_path: str
    retried: int = 0
    """Failed lines this run re-attempted (``retry_failed``)."""
    failures: tuple[FailedLine, ...] = field(default_factory=tuple)
    """Every failed line in the results file after this run, in file order."""

    @property
    def failed_total(self) -> int:
        """Failed lines in the results file after this run (earlier runs' included)."""
        return len(self.failures)

    def failure_reasons(self) -> list[tuple[str, int, str]]:
        """``(reason, count, first message)`` per reason, most frequent first."""
        counts = Counter(f.reason for f in self.failures)
        first: dict[str, str] = {}
        for f in self.failures:
            first.setdefault(f.reason, f.error.message)
        return [
            (reason, n, first[reason])
            for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ]


def read_results(out_path: str | os.PathLike[str]) -> tuple[list[str], dict[str, ErrorBody]]:
    """The custom_ids of a results file in file order, and the error of each failed one.

    Truncates a torn last line (no newline: an interrupted write). Raises ValueError on a
    complete line that is not a result line (the file is not ours, so nothing is appended to
    it) or on an id that appears twice.
    """
    path = os.fspath(out_path)
    if not os.path.exists(path):
        return [], {}
    ids: list[str] = []
    errors: dict[str, ErrorBody] = {}
    seen: set[str] = set()
    with open(path, "r+b") as f:
        offset = 0
        for line_no, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                logger.warning(
                    "%s: dropping torn last line %d (%d bytes, no newline: an interrupted write)",
                    path,
                    line_no,
                    len(raw),
                )
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
                break
            offset += len(raw)
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
                custom_id = data["custom_id"]
                if not isinstance(custom_id, str):
                    raise TypeError("custom_id is not a string")
                error = ErrorBody.model_validate(data["error"]) if data.get("error") else None
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path}:{line_no}: not a batch result line ({exc}); refusing to append to it"
                ) from exc
            if custom_id in seen:
                raise ValueError(f"{path}:{line_no}: custom_id {custom_id!r} appears twice")
            seen.add(custom_id)
            ids.append(custom_id)
            if error is not None:
                errors[custom_id] = error
    return ids, errors


def read_done_ids(out_path: str | os.PathLike[str]) -> list[str]:
    """custom_ids already in a results file, in file order; truncates a torn last line.

    Raises ValueError on a complete line that is not a result line.
    """
    return read_results(out_path)[0]


def _attribute_one(
    client: Client, custom_id: str, request: AttributionRequest, keep_timings: bool = False
) -> BatchResultLine:
    try:
        response = client.attribute_request(request)
        if not keep_timings:
            response = response.model_copy(update={"timings": StageTimings()})
    except APIError as exc:
        if not (isinstance(exc, BadRequestError) or exc.status_code in _LINE_ERROR_STATUSES):
            raise  # concerns every line (auth, network, 5xx after retries): stop, resume later
        error = ErrorBody(
            message=exc.message,
            type=exc.type or "invalid_request_error",
            param=exc.param,
            code=exc.code,
        )
        logger.info("%s: rejected by the server: %s", custom_id, exc)
        return BatchResultLine(custom_id=custom_id, error=error)
    return BatchResultLine(custom_id=custom_id, response=response)


def _unusable(item: LogLine) -> BatchResultLine:
    assert item.problem is not None
    logger.info("%s: not attributable: %s", item.custom_id, item.problem)
    error = ErrorBody(
        message=str(item.problem), type="invalid_request_error", param=None, code=item.code
    )
    return BatchResultLine(custom_id=item.custom_id, error=error)


def _write_line(f: BinaryIO, line: BatchResultLine) -> None:
    f.write(json_line(line))  # one write of the whole line, then flush to the OS
    f.flush()


def _done(line: BatchResultLine) -> Future[BatchResultLine]:
    future: Future[BatchResultLine] = Future()
    future.set_result(line)
    return future


def _attribute_in_order(
    client: Client,
    items: Iterable[LogLine],
    out: BinaryIO,
    concurrency: int,
    keep_timings: bool,
    on_line: Callable[[BatchResultLine], None],
) -> None:
    """Attribute `items` with `concurrency` threads, writing each result in input order."""
    window = concurrency * 4  # results that finished early wait here for their turn
    pending: deque[Future[BatchResultLine]] = deque()
    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tributary-batch")
    todo = iter(items)
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                item = next(todo, None)
                if item is None:
                    exhausted = True
                    break
                if item.request is None:
                    pending.append(_done(_unusable(item)))
                else:
                    pending.append(
                        executor.submit(
                            _attribute_one, client, item.custom_id, item.request, keep_timings
                        )
                    )
            if not pending:
                break
            line = pending.popleft().result()  # a run-stopping error propagates: stop, resume later
            _write_line(out, line)
            on_line(line)
    finally:
        for future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)
        out.flush()
        os.fsync(out.fileno())


def _retry_path(out_path: str) -> str:
    return out_path + ".retry"


def _merge_retries(out_path: str, keep: set[str]) -> None:
    """Put the results of ``<out>.retry`` in place of the lines they retried, in one rename.

    Lines of the output whose id is not in `keep` (failed lines no longer in the logs) are
    dropped. Idempotent: a merge interrupted before its rename is simply done again."""
    retry_path = _retry_path(out_path)
    retried: dict[str, bytes] = {}
    if os.path.exists(retry_path):
        read_results(retry_path)  # truncates a torn last line
        with open(retry_path, "rb") as f:
            for raw in f:
                if raw.strip():
                    retried[json.loads(raw)["custom_id"]] = raw
    tmp = out_path + ".merge"
    with open(out_path, "rb") as src, open(tmp, "wb") as dst:
        for raw in src:
            if not raw.strip():
                continue
            custom_id = json.loads(raw)["custom_id"]
            if custom_id in keep:
                dst.write(retried.get(custom_id, raw))
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, out_path)
    if os.path.exists(retry_path):
        os.remove(retry_path)


def run_batch(
    client: Client,
    logs_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    concurrency: int = 4,
    top_k: int = 10,
    progress: bool = True,
    *,
    direction: Direction = "helpful",
    token_wise: bool = False,
    filters: AttributionFilters | None = None,
    keep_timings: bool = False,
    retry_failed: bool = False,
) -> BatchRunSummary:
    """Attribute each logged generation in `logs_path`, appending `BatchResultLine`s to
    `out_path` in input order; resumes a previous, interrupted run over the same files.

    Unusable lines and requests the server refuses are recorded as failed lines and the run
    goes on; `retry_failed` re-attempts the failed lines already in `out_path`.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    out_name, logs_name = os.fspath(out_path), os.fspath(logs_path)

    def lines() -> Iterator[LogLine]:
        return iter_log_lines(
            logs_path, top_k=top_k, direction=direction, token_wise=token_wise, filters=filters
        )

    all_ids = [item.custom_id for item in lines()]
    known = set(all_ids)
    if os.path.exists(_retry_path(out_name)):  # a retry run stopped before its merge: finish it
        if not os.path.exists(out_name):
            raise ValueError(
                f"{_retry_path(out_name)} exists but {out_name} does not: remove the .retry file"
            )
        _merge_retries(out_name, keep=set(read_results(out_name)[0]))
    done, errors = read_results(out_name)
    stray = [i for i in done if i not in known and not (retry_failed and i in errors)]
    if stray:
        raise ValueError(
            f"{out_name} holds results for ids that are not in {logs_name} "
            f"(e.g. {stray[0]!r}): is it the output of another logs file?"
        )
    retry = {i for i in errors if i in known} if retry_failed else set()
    skipped = sum(1 for i in done if i in known and i not in retry)
    if done:
        logger.info(
            "resuming: %d of %d generations already in %s", len(done), len(all_ids), out_name
        )

    from tqdm import tqdm

    counts = {"succeeded": 0, "failed": 0}

    def count(line: BatchResultLine) -> None:
        counts["succeeded" if line.error is None else "failed"] += 1
        bar.update(1)

    if retry_failed and errors:
        bar = tqdm(total=len(retry), disable=not progress, unit="gen", desc="retrying failed")
        try:
            with open(_retry_path(out_name), "ab") as side:
                items = (item for item in lines() if item.custom_id in retry)
                _attribute_in_order(client, items, side, concurrency, keep_timings, count)
        finally:
            bar.close()
        _merge_retries(out_name, keep={i for i in done if i in known})
        done, errors = read_results(out_name)

    done_set = set(done)
    bar = tqdm(
        total=len(all_ids), initial=len(done), disable=not progress, unit="gen", desc="attributing"
    )
    try:
        with open(out_name, "ab") as out:
            items = (item for item in lines() if item.custom_id not in done_set)
            _attribute_in_order(client, items, out, concurrency, keep_timings, count)
    finally:
        bar.close()
    ids, errors = read_results(out_name)
    return BatchRunSummary(
        total=len(all_ids),
        skipped=skipped,
        succeeded=counts["succeeded"],
        failed=counts["failed"],
        out_path=out_name,
        retried=len(retry),
        failures=tuple(FailedLine(i, errors[i]) for i in ids if i in errors),
    )
