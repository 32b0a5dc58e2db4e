"""Batch jobs belong to the API key that created them; idempotency keys are per key and bound to the
body."""

from __future__ import annotations

import json
import sqlite3
import time

from fastapi.testclient import TestClient
from tributary_client import types
from tributary_service.app import create_app
from tributary_service.batch_jobs import BatchStore

from benchmarks.reliability import KEYS, QA

ONE, TWO = ({"authorization": f"Bearer {k}"} for k in KEYS)


def _lines(n: int, top_k: int = 1) -> dict:
    return {"requests": [{"custom_id": f"r{i}", "body": {**QA, "top_k": top_k}} for i in range(n)]}


def _wait(c: TestClient, batch_id: str, headers: dict) -> dict:
    for _ in range(400):
        batch = c.get(f"/v1/batches/{batch_id}", headers=headers).json()
        if batch["status"] in types.TERMINAL_BATCH_STATUSES:
            return batch
        time.sleep(0.05)
    raise AssertionError(batch)


def test_another_key_cannot_see_read_cancel_or_delete_a_batch(make_settings, tmp_path):
    with TestClient(create_app(make_settings(api_keys=list(KEYS)))) as c:
        created = c.post("/v1/batches", json=_lines(2), headers=ONE).json()
        batch_id = created["id"]
        for method, path in (("GET", ""), ("GET", "/results"), ("POST", "/cancel"), ("DELETE", "")):
            response = c.request(method, f"/v1/batches/{batch_id}{path}", headers=TWO)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["code"] == "batch_not_found"
        assert _wait(c, batch_id, ONE)["status"] == "completed"
        assert len(c.get(f"/v1/batches/{batch_id}/results", headers=ONE).text.splitlines()) == 2
        # the owner is a fingerprint of the key, never the key
        db = sqlite3.connect(tmp_path / "state" / "batches.sqlite")
        owners = [row[0] for row in db.execute("SELECT owner FROM jobs")]
        dump = "\n".join(db.iterdump())
        assert owners and all(o.startswith("key_") for o in owners)
        assert KEYS[0] not in dump and KEYS[1] not in dump
        deleted = c.delete(f"/v1/batches/{batch_id}", headers=ONE)
        assert deleted.status_code == 200 and deleted.json() == {"id": batch_id, "deleted": True}
        assert c.get(f"/v1/batches/{batch_id}", headers=ONE).status_code == 404
        assert (
            db.execute("SELECT COUNT(*) FROM lines WHERE job_id = ?", (batch_id,)).fetchone()[0]
            == 0
        )


def test_idempotency_keys_are_per_api_key_and_bound_to_the_body(make_settings):
    with TestClient(create_app(make_settings(api_keys=list(KEYS)))) as c:
        same = {"idempotency-key": "nightly-2026-12-03"}
        first = c.post("/v1/batches", json=_lines(2), headers={**ONE, **same}).json()
        again = c.post("/v1/batches", json=_lines(2), headers={**ONE, **same}).json()
        assert again["id"] == first["id"]
        other_body = c.post("/v1/batches", json=_lines(3), headers={**ONE, **same})
        assert (
            other_body.status_code == 409
            and other_body.json()["error"]["code"] == "idempotency_key_reused"
        )
        assert other_body.headers["x-should-retry"] == "false"
        # the other tenant's same key and body make its own job, never the first tenant's
        theirs = c.post("/v1/batches", json=_lines(2), headers={**TWO, **same})
        assert theirs.status_code == 200 and theirs.json()["id"] != first["id"]
        assert c.get(f"/v1/batches/{first['id']}", headers=TWO).status_code == 404
        assert c.get(f"/v1/batches/{theirs.json()['id']}", headers=ONE).status_code == 404


def test_open_batches_per_key_are_capped(make_settings):
    with TestClient(create_app(make_settings(api_keys=list(KEYS), max_open_batches=2))) as c:
        # keep the jobs open: the runner is stopped (on the server's loop) before any job exists
        c.portal.call(c.app.state.batch_runner.stop)
        for _ in range(2):
            assert c.post("/v1/batches", json=_lines(1), headers=ONE).status_code == 200
        refused = c.post("/v1/batches", json=_lines(1), headers=ONE)
        assert (
            refused.status_code == 429
            and refused.json()["error"]["code"] == "too_many_open_batches"
        )
        assert refused.headers["retry-after"]
        assert (
            c.post("/v1/batches", json=_lines(1), headers=TWO).status_code == 200
        )  # another key has its own allowance


def test_finished_batches_expire_and_results_stream_in_pages(tmp_path, monkeypatch):
    import tributary_service.batch_jobs as batch_jobs

    monkeypatch.setattr(batch_jobs, "RESULT_PAGE", 3)
    store = BatchStore(tmp_path / "b.sqlite")
    lines = [
        types.BatchRequestLine(custom_id=f"r{i}", body=types.AttributionRequest(**QA))
        for i in range(7)
    ]
    done = store.create("key_a", lines, None, None)
    running = store.create("key_a", lines[:1], None, None)
    for i in range(7):
        store.record(
            done.id, i, None, types.ErrorBody(message=f"m{i}", type="invalid_request_error")
        )
    results = [json.loads(line) for line in store.result_lines(done.id)]
    assert [r["custom_id"] for r in results] == [f"r{i}" for i in range(7)]
    store.set_status(done.id, "completed", completed=True)
    assert store.expire(86400.0) == 0  # finished just now
    assert store.expire(86400.0, now=time.time() + 2 * 86400) == 1
    assert (
        store.get(done.id) is None and store.get(running.id) is not None
    )  # an unfinished job is kept


def test_jobs_from_before_tenancy_are_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at INTEGER NOT NULL,
                           completed_at INTEGER, metadata_json TEXT, errors_json TEXT,
                           total INTEGER NOT NULL, idempotency_key TEXT UNIQUE);
        CREATE TABLE lines (job_id TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT NOT NULL,
                            body_json TEXT NOT NULL, result_json TEXT, error_json TEXT,
                            PRIMARY KEY (job_id, idx));
        INSERT INTO jobs VALUES ('batch_old', 'completed', 1, 2, NULL, NULL, 0, 'k');
    """)
    db.commit()
    db.close()
    store = BatchStore(path)
    assert (
        store.get("batch_old", "anonymous") is not None and store.get("batch_old", "key_x") is None
    )
