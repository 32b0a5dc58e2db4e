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
* **No duplicates.** An id is written at most once; ids in the logs must be unique.
* **Reproducible lines.** Server-side stage timings vary from run to run, so they are zeroed
  in the written lines (``keep_timings=True`` keeps them); attribution ids are content-derived
  by the server.

Errors: a request the server rejects as invalid (`BadRequestError`) is recorded as an error
line (rerunning would not change it). Anything else — connection failures, timeouts, rate
limits and 5xx after the client's retries, authentication — stops the run with the exception:
fix the cause and run again, it resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from ._base_client import json_line
from ._client import Client
from ._exceptions import BadRequestError
from .logs import iter_logged_generations
from .types import (
    AttributionFilters,
    AttributionRequest,
    BatchResultLine,
    Direction,
    ErrorBody,
    StageTimings,
)

logger = logging.getLogger(__name__)

__all__ = ["BatchRunSummary", "read_done_ids", "run_batch"]


@dataclass(frozen=True)
class BatchRunSummary:
    """What one `run_batch` call did."""

    total: int
    skipped: int
    succeeded: int
    failed: int
    out_path: str


def read_done_ids(out_path: str | os.PathLike[str]) -> list[str]:
    """custom_ids already in a results file, in file order; truncates a torn last line.

    Raises ValueError on a complete line that is not a result line (the file is not ours,
    so nothing is appended to it).
    """
    path = os.fspath(out_path)
    if not os.path.exists(path):
        return []
    ids: list[str] = []
    seen: set[str] = set()
    with open(path, "r+b") as f:
        offset = 0
        for line_no, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                logger.warning(
                    "%s: dropping torn last line %d (%d bytes, no newline: an interrupted write)",
                    path, line_no, len(raw),
                )
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
                break
            offset += len(raw)
            if not raw.strip():
                continue
            try:
                custom_id = json.loads(raw)["custom_id"]
                if not isinstance(custom_id, str):
                    raise TypeError("custom_id is not a string")
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path}:{line_no}: not a batch result line ({exc}); refusing to append to it"
                ) from exc
            if custom_id in seen:
                raise ValueError(f"{path}:{line_no}: custom_id {custom_id!r} appears twice")
            seen.add(custom_id)
            ids.append(custom_id)
    return ids


def _attribute_one(client: Client, custom_id: str, request: AttributionRequest, keep_timings: bool = False) -> BatchResultLine:
    try:
        response = client.attribute_request(request)
        if not keep_timings:
            response = response.model_copy(update={"timings": StageTimings()})
    except BadRequestError as exc:
        error = ErrorBody(
            message=exc.message,
            type=exc.type or "invalid_request_error",
            param=exc.param,
            code=exc.code,
        )
        logger.info("%s: rejected by the server: %s", custom_id, exc)
        return BatchResultLine(custom_id=custom_id, error=error)
    return BatchResultLine(custom_id=custom_id, response=response)


def _write_line(f: BinaryIO, line: BatchResultLine) -> None:
    f.write(json_line(line))  # one write of the whole line, then flush to the OS
    f.flush()


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
) -> BatchRunSummary:
    """Attribute each logged generation in `logs_path`, appending `BatchResultLine`s to
    `out_path` in input order; resumes a previous, interrupted run over the same files."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")

    def generations() -> Iterator[tuple[str, AttributionRequest]]:
        return iter_logged_generations(
            logs_path, top_k=top_k, direction=direction, token_wise=token_wise, filters=filters
        )

    all_ids = [custom_id for custom_id, _ in generations()]  # validates every line first
    known = set(all_ids)
    done = read_done_ids(out_path)
    stray = [i for i in done if i not in known]
    if stray:
        raise ValueError(
            f"{os.fspath(out_path)} holds results for ids that are not in {os.fspath(logs_path)} "
            f"(e.g. {stray[0]!r}): is it the output of another logs file?"
        )
    done_set = set(done)
    if done:
        logger.info("resuming: %d of %d generations already attributed", len(done), len(all_ids))

    from tqdm import tqdm

    succeeded = failed = 0
    window = concurrency * 4  # results that finished early wait here for their turn
    pending: deque[tuple[str, Future[BatchResultLine]]] = deque()
    bar = tqdm(total=len(all_ids), initial=len(done), disable=not progress, unit="gen", desc="attributing")
    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tributary-batch")
    out = open(out_path, "ab")
    try:
        todo = ((cid, req) for cid, req in generations() if cid not in done_set)
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                item = next(todo, None)
                if item is None:
                    exhausted = True
                    break
                pending.append((item[0], executor.submit(_attribute_one, client, *item, keep_timings)))
            if not pending:
                break
            _, future = pending.popleft()
            line = future.result()  # a transient error propagates: stop, resume later
            _write_line(out, line)
            if line.error is None:
                succeeded += 1
            else:
                failed += 1
            bar.update(1)
    finally:
        for _, future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)
        out.flush()
        os.fsync(out.fileno())
        out.close()
        bar.close()
    return BatchRunSummary(
        total=len(all_ids),
        skipped=len(done),
        succeeded=succeeded,
        failed=failed,
        out_path=os.fspath(out_path),
    )
