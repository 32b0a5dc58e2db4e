"""A running server (real uvicorn) serves what `tributary index add` appended, without a restart:
through the admin reload route, or by watching the manifest."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl
from tests.service.live_server import live_server

ADMIN = {"Authorization": "Bearer admin-key"}
API = {"Authorization": "Bearer api-key"}
QA = {"prompt": "What did Alba sell in year 1001?", "response": " Alba sold lanterns.", "top_k": 3}


def _build(root: Path) -> tuple[Path, Path, Path]:
    from tributary_indexer.build.builder import IndexBuilder
    from tributary_indexer.config import BuildConfig

    model = build_model_dir(root / "model", "gpt2")
    records = corpus_records(48)
    first = write_jsonl(root / "first.jsonl", records[:30])
    more = write_jsonl(
        root / "more.jsonl", [{**r, "id": f"added-{n}"} for n, r in enumerate(records[30:])]
    )
    config = BuildConfig(
        model=str(model),
        corpus=[str(first)],
        rank_in=4,
        rank_out=4,
        shard_size=16,
        progress=False,
        damping=0.01,
        num_threads=1,
    )
    IndexBuilder(config, root / "index").build()
    return root / "index", model, more


def _add(index: Path, corpus: Path) -> None:
    from tributary_indexer.build.builder import IndexBuilder
    from tributary_indexer.config import BuildConfig

    IndexBuilder(BuildConfig(corpus=[str(corpus)], progress=False, num_threads=1), index).add()


def test_admin_reload_serves_added_shards(tmp_path: Path):
    index, model, more = _build(tmp_path)
    with live_server(
        index,
        model,
        tmp_path / "state",
        TRIBUTARY_API_KEYS="api-key",
        TRIBUTARY_ADMIN_KEYS="admin-key",
    ) as base:
        before = httpx.get(base + "/v1/index", headers=API).json()
        assert before["n_examples"] == 30
        unchanged = httpx.post(base + "/v1/admin/reload", headers=ADMIN).json()
        assert unchanged["reloaded"] is False and unchanged["n_examples"] == 30

        _add(index, more)  # while the server runs
        assert (
            httpx.get(
                base + "/v1/examples", params={"record_id": "added-0"}, headers=API
            ).status_code
            == 404
        )

        # the admin route takes only admin keys
        assert httpx.post(base + "/v1/admin/reload").status_code == 401
        refused = httpx.post(base + "/v1/admin/reload", headers=API)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"

        # attributions keep being answered while the index is swapped
        with ThreadPoolExecutor(4) as pool:
            pending = [
                pool.submit(
                    httpx.post, base + "/v1/attributions", json=QA, headers=API, timeout=120
                )
                for _ in range(6)
            ]
            reload = httpx.post(base + "/v1/admin/reload", headers=ADMIN, timeout=120)
            statuses = [f.result().status_code for f in pending]
        assert statuses == [200] * 6
        assert reload.status_code == 200, reload.text
        body = reload.json()
        assert body["reloaded"] is True and (body["previous_n_examples"], body["n_examples"]) == (
            30,
            48,
        )
        assert body["index_id"] != body["previous_index_id"] == before["index_id"]

        after = httpx.get(base + "/v1/index", headers=API).json()
        assert after["n_examples"] == 48 and after["index_id"] == body["index_id"]
        found = httpx.get(
            base + "/v1/examples", params={"record_id": "added-0"}, headers=API
        ).json()
        assert found["example_id"] == 30 and found["file"] == "more.jsonl"
        r = httpx.post(
            base + "/v1/attributions", json={**QA, "top_k": 48}, headers=API, timeout=120
        ).json()
        assert {e["example_id"] for e in r["examples"]} == set(
            range(48)
        )  # the added examples are searched too
        assert "tributary_index_examples 48.0" in httpx.get(base + "/metrics").text


def test_reload_refuses_a_rebuilt_index_and_keeps_serving(tmp_path: Path):
    import shutil

    index, model, more = _build(tmp_path)
    with live_server(index, model, tmp_path / "state", TRIBUTARY_ADMIN_KEYS="admin-key") as base:
        # no admin keys: the route is off
        with live_server(index, model, tmp_path / "state2") as open_base:
            err = httpx.post(open_base + "/v1/admin/reload").json()["error"]
            assert err["code"] == "admin_disabled" and "TRIBUTARY_ADMIN_KEYS" in err["message"]
        # rebuild another index (another projector seed) in the served directory
        from tributary_indexer.build.builder import IndexBuilder
        from tributary_indexer.config import BuildConfig

        other = tmp_path / "other"
        IndexBuilder(
            BuildConfig(
                model=str(model),
                corpus=[str(more)],
                rank_in=4,
                rank_out=4,
                seed=7,
                progress=False,
                damping=0.01,
                num_threads=1,
            ),
            other,
        ).build()
        for name in ("manifest.json", "projector.safetensors", "hessian.safetensors"):
            if (other / name).exists():
                shutil.copyfile(other / name, index / name)
        r = httpx.post(base + "/v1/admin/reload", headers=ADMIN, timeout=120)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] in ("index_rebuilt", "index_not_loadable")
        assert httpx.get(base + "/v1/index").json()["n_examples"] == 30  # still the old one
        assert httpx.post(base + "/v1/attributions", json=QA, timeout=120).status_code == 200


@pytest.mark.slow
def test_manifest_watch_picks_up_added_shards(tmp_path: Path):
    index, model, more = _build(tmp_path)
    with live_server(index, model, tmp_path / "state", TRIBUTARY_WATCH_INDEX_S="0.3") as base:
        assert httpx.get(base + "/v1/index").json()["n_examples"] == 30
        _add(index, more)
        deadline = time.time() + 60
        while httpx.get(base + "/v1/index").json()["n_examples"] != 48:
            assert time.time() < deadline, "the watch did not load the grown index within 60 s"
            time.sleep(0.2)
        assert (
            httpx.get(base + "/v1/examples", params={"record_id": "added-3"}).json()["example_id"]
            == 33
        )
