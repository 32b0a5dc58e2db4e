"""Batch jobs shaped like the OpenAI Batch API, persisted in SQLite so a restart loses nothing.

A job holds request lines ``{custom_id, body}``; each line's result (or error) is written as soon
as it is known, so a restart resumes with the lines that have none. Status:
``validating → in_progress → completed | failed``; ``cancelling → cancelled`` on request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tributary_client import types

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at INTEGER NOT NULL, completed_at INTEGER,
    metadata_json TEXT, errors_json TEXT, total INTEGER NOT NULL, idempotency_key TEXT UNIQUE
);
CREATE TABLE IF NOT EXISTS lines (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT NOT NULL, body_json TEXT NOT NULL,
    result_json TEXT, error_json TEXT, PRIMARY KEY (job_id, idx)
);
"""
ACTIVE = ("validating", "in_progress", "cancelling")


class BatchStore:
    """The jobs database (one connection guarded by a lock; every write commits)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _q(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def create(self, lines: list[types.BatchRequestLine], metadata: dict[str, Any] | None, idempotency_key: str | None) -> types.Batch:
        """Store a new job (or return the one created with the same idempotency key)."""
        if idempotency_key:
            found = self._q("SELECT id FROM jobs WHERE idempotency_key = ?", (idempotency_key,))
            if found:
                batch = self.get(found[0][0])
                assert batch is not None
                return batch
        job_id = f"batch_{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO jobs (id, status, created_at, metadata_json, total, idempotency_key) VALUES (?, 'validating', ?, ?, ?, ?)",
                    (job_id, now, json.dumps(metadata) if metadata is not None else None, len(lines), idempotency_key),
                )
                self._conn.executemany(
                    "INSERT INTO lines (job_id, idx, custom_id, body_json) VALUES (?, ?, ?, ?)",
                    [(job_id, i, line.custom_id, line.body.model_dump_json()) for i, line in enumerate(lines)],
                )
                self._conn.execute("UPDATE jobs SET status = 'in_progress' WHERE id = ?", (job_id,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        batch = self.get(job_id)
        assert batch is not None
        return batch

    def get(self, job_id: str) -> types.Batch | None:
        rows = self._q("SELECT id, status, created_at, completed_at, metadata_json, errors_json, total FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return None
        jid, status, created, completed_at, meta, errors, total = rows[0]
        counts = self._q(
            "SELECT SUM(result_json IS NOT NULL), SUM(error_json IS NOT NULL) FROM lines WHERE job_id = ?", (job_id,)
        )[0]
        return types.Batch(
            id=jid, status=status, created_at=created, completed_at=completed_at,
            request_counts=types.BatchRequestCounts(total=total, completed=int(counts[0] or 0), failed=int(counts[1] or 0)),
            errors=json.loads(errors) if errors else None, metadata=json.loads(meta) if meta else None,
        )

    def set_status(self, job_id: str, status: str, completed: bool = False) -> None:
        self._q("UPDATE jobs SET status = ?, completed_at = CASE WHEN ? THEN ? ELSE completed_at END WHERE id = ?",
                (status, completed, int(time.time()), job_id))

    def request_cancel(self, job_id: str) -> types.Batch | None:
        batch = self.get(job_id)
        if batch is None or batch.status in types.TERMINAL_BATCH_STATUSES:
            return batch
        self.set_status(job_id, "cancelling")
        return self.get(job_id)

    def active_jobs(self) -> list[str]:
        return [r[0] for r in self._q(f"SELECT id FROM jobs WHERE status IN {ACTIVE} ORDER BY created_at, id")]

    def pending_lines(self, job_id: str, limit: int) -> list[tuple[int, str, types.AttributionRequest]]:
        rows = self._q("SELECT idx, custom_id, body_json FROM lines WHERE job_id = ? AND result_json IS NULL AND error_json IS NULL "
                       "ORDER BY idx LIMIT ?", (job_id, limit))
        return [(idx, cid, types.AttributionRequest.model_validate_json(body)) for idx, cid, body in rows]

    def record(self, job_id: str, idx: int, response: types.AttributionResponse | None, error: types.ErrorBody | None) -> None:
        self._q("UPDATE lines SET result_json = ?, error_json = ? WHERE job_id = ? AND idx = ?",
                (response.model_dump_json() if response else None, error.model_dump_json() if error else None, job_id, idx))

    def result_lines(self, job_id: str) -> Iterator[str]:
        """JSONL lines of finished requests, in input order."""
        rows = self._q("SELECT custom_id, result_json, error_json FROM lines WHERE job_id = ? AND "
                       "(result_json IS NOT NULL OR error_json IS NOT NULL) ORDER BY idx", (job_id,))
        for custom_id, result, error in rows:
            yield json.dumps({"custom_id": custom_id, "response": json.loads(result) if result else None,
                              "error": json.loads(error) if error else None}) + "\n"


class BatchRunner:
    """Works through active jobs in the background, a slice of lines at a time."""

    def __init__(self, store: BatchStore, answer: Any, slice_size: int = 16):
        self.store = store
        self.answer = answer  # async (AttributionRequest) -> AttributionResponse, raises on bad input
        self.slice_size = slice_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tributary-batch-runner")
        self._wake.set()  # resume whatever a previous process left unfinished

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def notify(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for job_id in self.store.active_jobs():
                await self._process(job_id)

    async def _process(self, job_id: str) -> None:
        from .errors import ServiceError  # local: avoid a cycle at import time

        while True:
            batch = self.store.get(job_id)
            if batch is None:
                return
            if batch.status == "cancelling":
                self.store.set_status(job_id, "cancelled", completed=True)
                return
            lines = self.store.pending_lines(job_id, self.slice_size)
            if not lines:
                self.store.set_status(job_id, "completed", completed=True)
                logger.info("batch %s completed (%d requests)", job_id, batch.request_counts.total)
                return

            async def one(idx: int, request: types.AttributionRequest) -> None:
                try:
                    response = await self.answer(request)
                    self.store.record(job_id, idx, response, None)
                except ServiceError as exc:
                    if exc.status == 429:  # back-pressure: leave the line for the next round
                        await asyncio.sleep(0.05)
                        return
                    self.store.record(job_id, idx, None, types.ErrorBody(message=exc.message, type=exc.type, param=exc.param, code=exc.code))

            await asyncio.gather(*(one(idx, req) for idx, _, req in lines))
