"""Batch jobs shaped like the OpenAI Batch API, persisted in SQLite so a restart loses nothing.

A job holds request lines ``{custom_id, body}``; each line's result (or error) is written as soon
as it is known, so a restart resumes with the lines that have none. Status:
``validating → in_progress → completed | failed``; ``cancelling → cancelled`` on request.

Every job belongs to the tenant that created it (a fingerprint of its API key, never the key):
another tenant cannot see, read, cancel or delete it. An idempotency key is scoped to its tenant
and bound to a hash of the job's content, so a retry returns the same job and a different body
under the same key is refused. Finished jobs are deleted ``retention_s`` after they finish.
"""

from __future__ import annotations

import asyncio
import hashlib
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

from .background import cancel_and_wait

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL,
    completed_at INTEGER, metadata_json TEXT, errors_json TEXT, total INTEGER NOT NULL,
    idempotency_key TEXT, content_sha256 TEXT, UNIQUE (owner, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_owner_status ON jobs (owner, status);
CREATE TABLE IF NOT EXISTS lines (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT NOT NULL, body_json TEXT NOT NULL,
    result_json TEXT, error_json TEXT, PRIMARY KEY (job_id, idx)
);
"""
ACTIVE = ("validating", "in_progress", "cancelling")
RESULT_PAGE = 256
"""Result rows read from the database at a time while streaming a job's results."""


class IdempotencyConflict(Exception):
    """The idempotency key was used before by this tenant for a different body."""


class TooManyOpenBatches(Exception):
    """The tenant already has the allowed number of unfinished jobs."""


def content_hash(lines: list[types.BatchRequestLine], metadata: dict[str, Any] | None) -> str:
    """sha256 of a job's content in canonical form (what an idempotency key is bound to)."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(
            json.dumps(line.custom_id).encode()
            + b"\x00"
            + line.body.model_dump_json().encode()
            + b"\n"
        )
    digest.update(json.dumps(metadata, sort_keys=True).encode())
    return digest.hexdigest()


class BatchStore:
    """The jobs database (one connection guarded by a lock; every write commits)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self._conn.executescript(_SCHEMA)
        self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _migrate(self) -> None:
        """Jobs written before tenancy had no owner and one global idempotency namespace: they
        become the anonymous tenant's (visible only while the server runs without keys)."""
        columns = [r[1] for r in self._conn.execute("PRAGMA table_info(jobs)").fetchall()]
        if not columns or "owner" in columns:
            return
        logger.info("migrating %s to per-tenant batch jobs", self.path)
        self._conn.executescript("""
            BEGIN IMMEDIATE;
            ALTER TABLE jobs RENAME TO jobs_v1;
            CREATE TABLE jobs (
                id TEXT PRIMARY KEY, owner TEXT NOT NULL, status TEXT NOT NULL,
                created_at INTEGER NOT NULL, completed_at INTEGER, metadata_json TEXT,
                errors_json TEXT, total INTEGER NOT NULL, idempotency_key TEXT,
                content_sha256 TEXT, UNIQUE (owner, idempotency_key)
            );
            INSERT INTO jobs (id, owner, status, created_at, completed_at, metadata_json,
                              errors_json, total, idempotency_key)
                SELECT id, 'anonymous', status, created_at, completed_at, metadata_json,
                       errors_json, total, idempotency_key
                FROM jobs_v1;
            DROP TABLE jobs_v1;
            COMMIT;
        """)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _q(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def create(
        self,
        owner: str,
        lines: list[types.BatchRequestLine],
        metadata: dict[str, Any] | None,
        idempotency_key: str | None,
        max_open: int | None = None,
    ) -> types.Batch:
        """Store a new job for ``owner`` (or return the one this owner created with the same
        idempotency key and content). Raises :class:`IdempotencyConflict` when the key was used for
        other content, :class:`TooManyOpenBatches` when ``owner`` has ``max_open`` unfinished
        jobs."""
        digest = content_hash(lines, metadata)
        job_id = f"batch_{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        rows = [
            (job_id, i, line.custom_id, line.body.model_dump_json()) for i, line in enumerate(lines)
        ]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if idempotency_key:
                    found = self._conn.execute(
                        "SELECT id, content_sha256 FROM jobs WHERE owner = ? AND idempotency_key = "
                        "?",
                        (owner, idempotency_key),
                    ).fetchall()
                    if found:
                        self._conn.execute("ROLLBACK")
                        if found[0][1] != digest:
                            raise IdempotencyConflict(idempotency_key)
                        return self._get_unlocked(found[0][0])  # type: ignore[return-value]
                if max_open is not None:
                    (n_open,) = self._conn.execute(
                        f"SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN {ACTIVE}",
                        (owner,),
                    ).fetchone()
                    if n_open >= max_open:
                        self._conn.execute("ROLLBACK")
                        raise TooManyOpenBatches(str(n_open))
                self._conn.execute(
                    "INSERT INTO jobs (id, owner, status, created_at, metadata_json, total, "
                    "idempotency_key, content_sha256) VALUES (?, ?, 'validating', ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        owner,
                        now,
                        json.dumps(metadata) if metadata is not None else None,
                        len(lines),
                        idempotency_key,
                        digest,
                    ),
                )
                self._conn.executemany(
                    "INSERT INTO lines (job_id, idx, custom_id, body_json) VALUES (?, ?, ?, ?)",
                    rows,
                )
                self._conn.execute("UPDATE jobs SET status = 'in_progress' WHERE id = ?", (job_id,))
                self._conn.execute("COMMIT")
            except (IdempotencyConflict, TooManyOpenBatches):
                raise
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            batch = self._get_unlocked(job_id)
        assert batch is not None
        return batch

    def get(self, job_id: str, owner: str | None = None) -> types.Batch | None:
        """The job, or None when there is none (or it belongs to another owner than ``owner``)."""
        with self._lock:
            return self._get_unlocked(job_id, owner)

    def _get_unlocked(self, job_id: str, owner: str | None = None) -> types.Batch | None:
        rows = self._conn.execute(
            "SELECT id, status, created_at, completed_at, metadata_json, errors_json, total, owner "
            "FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchall()
        if not rows or (owner is not None and rows[0][7] != owner):
            return None
        jid, status, created, completed_at, meta, errors, total, _ = rows[0]
        counts = self._conn.execute(
            "SELECT SUM(result_json IS NOT NULL), SUM(error_json IS NOT NULL) FROM lines WHERE "
            "job_id = ?",
            (job_id,),
        ).fetchone()
        return types.Batch(
            id=jid,
            status=status,
            created_at=created,
            completed_at=completed_at,
            request_counts=types.BatchRequestCounts(
                total=total, completed=int(counts[0] or 0), failed=int(counts[1] or 0)
            ),
            errors=json.loads(errors) if errors else None,
            metadata=json.loads(meta) if meta else None,
        )

    def set_status(self, job_id: str, status: str, completed: bool = False) -> None:
        self._q(
            "UPDATE jobs SET status = ?, completed_at = CASE WHEN ? THEN ? ELSE completed_at END "
            "WHERE id = ?",
            (status, completed, int(time.time()), job_id),
        )

    def request_cancel(self, job_id: str, owner: str | None = None) -> types.Batch | None:
        batch = self.get(job_id, owner)
        if batch is None or batch.status in types.TERMINAL_BATCH_STATUSES:
            return batch
        self.set_status(job_id, "cancelling")
        return self.get(job_id, owner)

    def delete(self, job_id: str, owner: str | None = None) -> bool:
        """Delete a job and its results; False when there is none (for ``owner``)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                sql, params = "DELETE FROM jobs WHERE id = ?", [job_id]
                if owner is not None:
                    sql, params = sql + " AND owner = ?", [job_id, owner]
                deleted = self._conn.execute(sql, params).rowcount
                if deleted:
                    self._conn.execute("DELETE FROM lines WHERE job_id = ?", (job_id,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return bool(deleted)

    def expire(self, retention_s: float, now: float | None = None) -> int:
        """Delete the finished jobs that finished more than ``retention_s`` ago; how many."""
        cutoff = int((time.time() if now is None else now) - retention_s)
        expired = [
            r[0]
            for r in self._q(
                f"SELECT id FROM jobs WHERE status NOT IN {ACTIVE} AND completed_at IS NOT NULL "
                "AND completed_at < ?",
                (cutoff,),
            )
        ]
        for job_id in expired:
            self.delete(job_id)
        if expired:
            logger.info("deleted %d finished batch jobs past their retention", len(expired))
        return len(expired)

    def active_jobs(self) -> list[str]:
        return [
            r[0]
            for r in self._q(
                f"SELECT id FROM jobs WHERE status IN {ACTIVE} ORDER BY created_at, id"
            )
        ]

    def pending_lines(
        self, job_id: str, limit: int
    ) -> list[tuple[int, str, types.AttributionRequest]]:
        rows = self._q(
            "SELECT idx, custom_id, body_json FROM lines WHERE job_id = ? AND result_json IS NULL "
            "AND error_json IS NULL ORDER BY idx LIMIT ?",
            (job_id, limit),
        )
        return [
            (idx, cid, types.AttributionRequest.model_validate_json(body))
            for idx, cid, body in rows
        ]

    def record(
        self,
        job_id: str,
        idx: int,
        response: types.AttributionResponse | None,
        error: types.ErrorBody | None,
    ) -> None:
        self._q(
            "UPDATE lines SET result_json = ?, error_json = ? WHERE job_id = ? AND idx = ?",
            (
                response.model_dump_json() if response else None,
                error.model_dump_json() if error else None,
                job_id,
                idx,
            ),
        )

    def result_lines(self, job_id: str) -> Iterator[str]:
        """JSONL lines of finished requests, in input order, read from the database a page at a
        time."""
        after = -1
        while True:
            rows = self._q(
                "SELECT idx, custom_id, result_json, error_json FROM lines WHERE job_id = ? AND "
                "idx > ? AND (result_json IS NOT NULL OR error_json IS NOT NULL) ORDER BY idx "
                "LIMIT ?",
                (job_id, after, RESULT_PAGE),
            )
            for idx, custom_id, result, error in rows:
                after = idx
                yield (
                    '{"custom_id": '
                    + json.dumps(custom_id)
                    + ', "response": '
                    + (result or "null")
                    + ', "error": '
                    + (error or "null")
                    + "}\n"
                )
            if len(rows) < RESULT_PAGE:
                return


class BatchRunner:
    """Works through active jobs in the background, a slice of lines at a time; deletes expired
    jobs."""

    def __init__(
        self,
        store: BatchStore,
        answer: Any,
        slice_size: int = 16,
        retention_s: float | None = None,
        sweep_every_s: float = 3600.0,
    ):
        self.store = store
        self.answer = (
            answer  # async (AttributionRequest) -> AttributionResponse, raises on bad input
        )
        self.slice_size = slice_size
        self.retention_s = retention_s
        self.sweep_every_s = sweep_every_s
        self._last_sweep = float("-inf")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tributary-batch-runner")
        self._wake.set()  # resume whatever a previous process left unfinished

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def notify(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.sweep_every_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self.retention_s is not None and time.monotonic() - self._last_sweep >= min(
                self.sweep_every_s, self.retention_s
            ):
                self._last_sweep = time.monotonic()
                await asyncio.to_thread(self.store.expire, self.retention_s)
            for job_id in await asyncio.to_thread(self.store.active_jobs):
                await self._process(job_id)

    async def _process(self, job_id: str) -> None:
        from .errors import ServiceError  # local: avoid a cycle at import time

        # every database call runs in a worker thread: a commit waits for the disk
        # (synchronous=FULL)
        while True:
            batch = await asyncio.to_thread(self.store.get, job_id)
            if batch is None:  # deleted
                return
            if batch.status == "cancelling":
                await asyncio.to_thread(self.store.set_status, job_id, "cancelled", True)
                return
            lines = await asyncio.to_thread(self.store.pending_lines, job_id, self.slice_size)
            if not lines:
                await asyncio.to_thread(self.store.set_status, job_id, "completed", True)
                logger.info("batch %s completed (%d requests)", job_id, batch.request_counts.total)
                return

            async def one(idx: int, request: types.AttributionRequest) -> None:
                try:
                    response = await self.answer(request)
                    await asyncio.to_thread(self.store.record, job_id, idx, response, None)
                except ServiceError as exc:
                    if exc.status in (429, 503):  # back-pressure: leave the line for the next round
                        await asyncio.sleep(0.05)
                        return
                    error = types.ErrorBody(
                        message=exc.message, type=exc.type, param=exc.param, code=exc.code
                    )
                    await asyncio.to_thread(self.store.record, job_id, idx, None, error)

            await asyncio.gather(*(one(idx, req) for idx, _, req in lines))
