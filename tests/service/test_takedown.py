"""Takedowns on every surface of a running server, and verbatim evidence beside influence.

Index a corpus, serve it (real uvicorn), remove a provider with the CLI and a record with the
admin API while it runs, and check that no attribution (both directions, filtered or not), batch
(new or computed before the removal), example lookup, index composition or valuation report
returns them again; then compact the index under the server and restart it.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from tributary_client import Client, NotFoundError, cli
from tributary_indexer.cli import main as index_main
from tributary_indexer.data.tombstones import tombstone_lock

from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl
from tests.service.live_server import live_server

ADMIN, USER = "admin-key-123", "user-key-456"
PROVIDER = {
    f"doc-{i}" if i % 3 == 0 else f"qa-{i}" if i % 3 == 1 else f"chat-{i}": [
        "acme",
        "globex",
        "initech",
    ][i % 3]
    for i in range(36)
}


@pytest.fixture(scope="module")
def takedown_index(tmp_path_factory) -> tuple[Path, Path]:
    from tributary_indexer.build.builder import IndexBuilder
    from tributary_indexer.config import BuildConfig

    root = tmp_path_factory.mktemp("takedown")
    model = build_model_dir(root / "model", "gpt2")
    corpus = write_jsonl(root / "corpus.jsonl", corpus_records(36))
    config = BuildConfig(
        model=str(model),
        corpus=[str(corpus)],
        rank_in=4,
        rank_out=4,
        shard_size=10,
        progress=False,
        damping=0.01,
        num_threads=1,
    )
    IndexBuilder(config, root / "index").build()
    return root / "index", model


def _ids_of(response: dict | object) -> set[str]:
    examples = response["examples"] if isinstance(response, dict) else response.examples  # type: ignore[attr-defined]
    return {e["record_id"] if isinstance(e, dict) else e.record_id for e in examples}


def test_removed_examples_leave_every_surface_of_a_running_server(takedown_index, tmp_path, capsys):
    source, model = takedown_index
    index = shutil.copytree(source, tmp_path / "index")
    prompt, response = "What did Alba sell in year 1000?", " Alba sold lanterns."
    logs = tmp_path / "logs.jsonl"
    logs.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"log-{i}",
                    "prompt": f"What did {n} sell in year {1000 + i}?",
                    "response": f" {n} sold copper.",
                }
            )
            + "\n"
            for i, n in enumerate(["Alba", "Borin", "Cyra"])
        )
    )
    with live_server(
        index, model, tmp_path / "state", "--admin-key", ADMIN, "--api-key", USER
    ) as base:
        with Client(base_url=base, api_key=USER, max_retries=0) as client:
            before = client.attribute(prompt, response, top_k=36, direction="both")
            assert {PROVIDER[r] for r in _ids_of(before)} == {"acme", "globex", "initech"}
            early = client.create_batch(
                [("b0", {"prompt": prompt, "response": response, "top_k": 30})]
            )
            assert (
                client.wait_for_batch(early.id, poll_interval=0.1, timeout=120).status
                == "completed"
            )

            # 1. the CLI removes a provider while the server runs; 2. the admin API removes one
            #    record
            assert (
                index_main(
                    [
                        "remove",
                        "--index",
                        str(index),
                        "--provider",
                        "acme",
                        "--reason",
                        "consent withdrawn",
                    ]
                )
                == 0
            )
            with Client(base_url=base, api_key=ADMIN, max_retries=0) as admin:
                done = admin.remove_examples(
                    record_ids=["qa-1", "no-such-record"], reason="takedown notice"
                )
            assert (done.removed, done.not_found, done.total_removed) == (1, ["no-such-record"], 13)
            gone = {r for r, p in PROVIDER.items() if p == "acme"} | {"qa-1"}

            # attributions: never returned, and top-k stays full
            for direction in ("helpful", "harmful", "both"):
                after = client.attribute(
                    prompt, response, top_k=10, direction=direction, token_wise=True
                )
                assert not _ids_of(after) & gone
                assert len(after.examples) == (20 if direction == "both" else 10)
            everything = client.attribute(prompt, response, top_k=36, direction="helpful")
            assert _ids_of(everything) == set(PROVIDER) - gone
            assert client.attribute(prompt, response, top_k=5, provider="acme").examples == []
            # example lookups, by id and by record id
            removed_example = next(e for e in before.examples if e.record_id == "doc-0")
            with pytest.raises(NotFoundError, match="removed"):
                client.get_example(removed_example.example_id)
            with pytest.raises(NotFoundError):
                client.get_example_by_record_id("doc-0")
            # the index summary's composition no longer counts them
            info = client.index_info()
            assert info.removed_examples == 13
            assert "acme" not in {
                row.key for row in info.composition or [] if row.group_by == "provider"
            }
            # a batch computed before the removal, and a new one
            old_lines = list(client.iter_batch_results(early.id))
            assert old_lines[0].response is not None and not _ids_of(old_lines[0].response) & gone
            fresh = client.create_batch(
                [("b1", {"prompt": prompt, "response": response, "top_k": 30, "direction": "both"})]
            )
            client.wait_for_batch(fresh.id, poll_interval=0.1, timeout=120)
            line = next(iter(client.iter_batch_results(fresh.id)))
            assert line.response is not None and not _ids_of(line.response) & gone
        # the CLI's batch and valuation report
        out = tmp_path / "results.jsonl"
        rc = cli.main(
            [
                "--base-url",
                base,
                "--api-key",
                USER,
                "batch",
                str(logs),
                "-o",
                str(out),
                "--top-k",
                "20",
                "--no-progress",
                "--report",
                str(tmp_path / "valuation"),
            ]
        )
        assert rc == 0, capsys.readouterr().err
        for row in map(json.loads, out.read_text().splitlines()):
            assert not _ids_of(row["response"]) & gone
        rows = list(csv.DictReader((tmp_path / "valuation.csv").open(encoding="utf-8")))
        assert "acme" not in {row["key"] for row in rows if row["group_by"] == "provider"}
        assert not any(r in gone for row in rows for r in row["top_records"].split())
        assert "acme" not in (tmp_path / "valuation.md").read_text(encoding="utf-8")

        # compaction under the running server: it refuses rather than mix id spaces
        assert index_main(["compact", "--index", str(index)]) == 0
        for method, path, body in (
            ("POST", "/v1/attributions", {"prompt": prompt, "response": response}),
            ("GET", "/v1/index", None),
            ("GET", f"/v1/examples/{removed_example.example_id + 1}", None),
            ("GET", f"/v1/batches/{early.id}/results", None),
        ):
            refused = httpx.request(
                method, base + path, json=body, headers={"Authorization": f"Bearer {USER}"}
            )
            assert (
                refused.status_code == 503 and refused.json()["error"]["code"] == "index_changed"
            ), (path, refused.text)
            assert "restart" in refused.json()["error"]["message"]
        # ... until it is told to load the compacted index, without a restart
        reload = httpx.post(
            base + "/v1/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120
        )
        assert reload.status_code == 200 and reload.json()["n_examples"] == 36 - 13, reload.text
        with Client(base_url=base, api_key=USER, max_retries=0) as client:
            info = client.index_info()
            assert info.n_examples == 36 - 13 and info.removed_examples == 0
            assert _ids_of(client.attribute(prompt, response, top_k=36)) == set(PROVIDER) - gone
            with Client(
                base_url=base, api_key=ADMIN, max_retries=0
            ) as admin:  # removals go on in the new id space
                assert admin.remove_examples(record_ids=["qa-4"]).total_removed == 1
            assert _ids_of(client.attribute(prompt, response, top_k=36)) == set(PROVIDER) - gone - {
                "qa-4"
            }
    with live_server(index, model, tmp_path / "state2") as base:  # and a restarted server agrees
        with Client(base_url=base, max_retries=0) as client:
            assert client.index_info().removed_examples == 1
            assert _ids_of(client.attribute(prompt, response, top_k=36)) == set(PROVIDER) - gone - {
                "qa-4"
            }


def test_admin_route_is_authenticated_and_validated(takedown_index, tmp_path):
    from fastapi.testclient import TestClient
    from tributary_service.app import create_app
    from tributary_service.settings import ServiceSettings

    source, model = takedown_index
    index = shutil.copytree(source, tmp_path / "index")
    settings = dict(index=index, model=model, state_dir=tmp_path / "state", batch_window_ms=1.0)
    with TestClient(
        create_app(ServiceSettings(**settings))
    ) as c:  # no admin key configured: the route is off
        r = c.post("/v1/admin/removals", json={"provider": "acme"})
        assert r.status_code == 403 and "TRIBUTARY_ADMIN_KEYS" in r.json()["error"]["message"]
    with TestClient(
        create_app(ServiceSettings(**settings, admin_keys=[ADMIN], api_keys=[USER]))
    ) as c:
        url, admin = "/v1/admin/removals", {"Authorization": f"Bearer {ADMIN}"}
        assert c.post(url, json={"provider": "acme"}).status_code == 401
        user = c.post(url, json={"provider": "acme"}, headers={"Authorization": f"Bearer {USER}"})
        assert (
            user.status_code == 401 and user.json()["error"]["code"] == "invalid_api_key"
        )  # an API key is no admin key
        for body, needle in (
            ({"provider": "acme", "source": "x"}, "exactly one"),
            ({}, "exactly one"),
            ({"record_ids": []}, "record_ids"),
            ({"record_ids": ["x"] * 10_001}, "record_ids"),
            ({"record_ids": [""]}, "record_ids"),
            ({"provider": "acme", "extra": 1}, "extra"),
            ({"provider": 5}, "provider"),
            ({"provider": "a", "reason": "r" * 1001}, "reason"),
        ):
            r = c.post(url, json=body, headers=admin)
            assert r.status_code == 400 and needle in json.dumps(r.json()["error"]), (
                body,
                r.json(),
            )
        r = c.post(url, json={"provider": "nobody"}, headers=admin)
        assert r.status_code == 404 and r.json()["error"]["code"] == "nothing_matched"
        with tombstone_lock(index):  # a removal or compaction of another process holds the index
            r = c.post(url, json={"provider": "acme"}, headers=admin)
        assert (
            r.status_code == 409
            and r.json()["error"]["code"] == "index_busy"
            and "retry" in r.json()["error"]["message"]
        )
        assert not (index / "tombstones.json").exists()  # refusals wrote nothing
        sources = [
            row["key"]
            for row in c.get("/v1/index", headers={"Authorization": f"Bearer {USER}"}).json()[
                "composition"
            ]
            if row["group_by"] == "source"
        ]
        r = c.post(url, json={"source": sources[0]}, headers=admin)
        assert r.status_code == 200 and r.json()["removed"] == 36
        r = c.post(
            "/v1/attributions",
            json={"prompt": "a", "response": " b", "top_k": 5},
            headers={"Authorization": f"Bearer {USER}"},
        )
        assert (
            r.status_code == 200 and r.json()["examples"] == []
        )  # every example of the one source is gone
        (index / ".tombstones.lock").unlink()
        (
            index / ".tombstones.lock"
        ).mkdir()  # the lock cannot be opened, as on a read-only mount (root ignores modes)
        r = c.post(url, json={"provider": "acme"}, headers=admin)
        assert r.status_code == 503 and r.json()["error"]["code"] == "index_read_only", r.text
        assert "tributary index remove" in r.json()["error"]["message"]


def test_verbatim_spans_and_evidence(make_settings):
    """Spans are verbatim on both sides (checked against the full example text); evidence beside
    influence."""
    from fastapi.testclient import TestClient
    from tributary_service.app import create_app

    response = (
        "In year 1000, Alba sells lanterns in Varn."  # doc-0 of the corpus states exactly this
    )
    with TestClient(create_app(make_settings(ranking="linear"))) as c:
        body = {
            "prompt": "Where does Alba sell lanterns in year 1000?",
            "response": response,
            "top_k": 8,
            "direction": "both",
            "evidence": True,
            "token_wise": True,
        }
        data = c.post("/v1/attributions", json=body).json()
        assert data["timings"]["verbatim_ms"] >= 0
        copied = None
        for ex in data["examples"]:
            full = c.get(f"/v1/examples/{ex['example_id']}").json()["text"]
            v, e = ex["verbatim"], ex["evidence"]
            for side, text in (("response_spans", response), ("prompt_spans", body["prompt"])):
                for span in v[side]:
                    assert (
                        text[span["start"] : span["end"]]
                        == full[span["example_start"] : span["example_end"]]
                    )
                    assert span["end"] - span["start"] >= 12
            assert e["influence"] == pytest.approx(
                ex["score"], rel=1e-4, abs=1e-6
            )  # linear ranking: score = influence
            assert e["verbatim_share"] == v["response_coverage"] and 0 <= e["verbatim_share"] <= 1
            shares = np.array(ex["response_token_scores"])
            assert e["token_peak"] == pytest.approx(shares[np.argmax(np.abs(shares))])
            if ex["record_id"] == "doc-0":
                copied = ex
        assert copied is None or copied["verbatim"]["response_coverage"] == pytest.approx(1.0)
        # every acme example (doc-0 among them): the copied document and those without shared
        # wording stand apart
        acme = c.post(
            "/v1/attributions",
            json=dict(body, top_k=20, direction="helpful", filters={"provider": ["acme"]}),
        ).json()
        coverage = {ex["record_id"]: ex["verbatim"]["response_coverage"] for ex in acme["examples"]}
        assert len(coverage) == 20 and coverage["doc-0"] == pytest.approx(1.0)
        assert (
            min(coverage.values()) == 0.0
        )  # the other years' documents share at most "In year 10xx" (fewer than 12 characters)
        span = next(ex for ex in acme["examples"] if ex["record_id"] == "doc-0")["verbatim"][
            "response_spans"
        ][0]
        assert (span["start"], span["end"]) == (0, len(response))
        off = c.post(
            "/v1/attributions",
            json={"prompt": "q", "response": response, "top_k": 3, "verbatim": False},
        ).json()
        assert all(ex["verbatim"] is None and ex["evidence"] is None for ex in off["examples"])
