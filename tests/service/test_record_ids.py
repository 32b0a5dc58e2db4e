"""A corpus with its own string ids, end to end: index it, serve it (real uvicorn), and find the ids
again in an attribution, a batch result, the valuation report and the example lookup."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import pytest
from tributary_client import Client, NotFoundError, cli

from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl
from tests.service.live_server import live_server

PROMPT, RESPONSE = "What did Alba sell in year 1001?", " Alba sold lanterns."


def _own_id(n: int) -> str:
    return f"sku/{n:04d}·ü"  # slash, non-ASCII: ids travel as opaque strings


@pytest.fixture(scope="module")
def string_id_index(tmp_path_factory) -> tuple[Path, Path, dict[str, dict]]:
    from tributary_indexer.build.builder import IndexBuilder
    from tributary_indexer.config import BuildConfig

    root = tmp_path_factory.mktemp("record-ids")
    model = build_model_dir(root / "model", "gpt2")
    records = corpus_records(36)
    for n, record in enumerate(records):
        record["id"] = _own_id(n)
    corpus = root / "corpus"
    (corpus / "vendor-a").mkdir(parents=True)
    write_jsonl(corpus / "vendor-a" / "part-1.jsonl", records[:20])
    write_jsonl(corpus / "vendor-b.jsonl", records[20:])
    config = BuildConfig(
        model=str(model),
        corpus=[str(corpus)],
        rank_in=4,
        rank_out=4,
        shard_size=16,
        progress=False,
        damping=0.01,
        num_threads=1,
    )
    IndexBuilder(config, root / "index").build()
    where = {
        _own_id(n): {
            "file": "vendor-a/part-1.jsonl" if n < 20 else "vendor-b.jsonl",
            "line": n + 1 if n < 20 else n - 19,
            "provider": r["provider"],
        }
        for n, r in enumerate(records)
    }
    return root / "index", model, where


def test_string_ids_in_attribution_batch_and_report(
    string_id_index, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    index, model, where = string_id_index
    with live_server(index, model, tmp_path / "state") as base:
        # 1. an attribution (SDK) names every example by its own id, file and line
        with Client(base_url=base, max_retries=0) as client:
            result = client.attribute(PROMPT, RESPONSE, top_k=8, direction="both")
            assert len(result.examples) == 16
            for ex in result.examples:
                assert ex.record_id in where, ex
                assert (ex.file, ex.line, ex.provider) == tuple(where[ex.record_id].values())
                # ... and the id finds the same example again
                found = client.get_example_by_record_id(ex.record_id)
                assert found.example_id == ex.example_id and found.record_id == ex.record_id
            with pytest.raises(NotFoundError):
                client.get_example_by_record_id("sku/9999")
        raw = httpx.get(base + "/v1/examples", params={"record_id": _own_id(3)}).json()
        assert (
            raw["record_id"] == _own_id(3)
            and raw["file"] == "vendor-a/part-1.jsonl"
            and raw["line"] == 4
        )

        # 2. the CLI's table and JSON show them
        assert (
            cli.main(
                [
                    "--base-url",
                    base,
                    "attribute",
                    "--prompt",
                    PROMPT,
                    "--response",
                    RESPONSE,
                    "--top-k",
                    "3",
                ]
            )
            == 0
        )
        table = capsys.readouterr().out
        assert sum(record_id in table for record_id in where) == 3
        assert cli.main(["--base-url", base, "example", "--record-id", _own_id(25)]) == 0
        assert f"record {_own_id(25)} (vendor-b.jsonl:6)" in capsys.readouterr().out

        # 3. a batch of logs: every result line carries the record ids; the report lists them per
        #    provider
        logs = tmp_path / "logs.jsonl"
        logs.write_text(
            "".join(
                json.dumps(
                    {
                        "id": f"log-{i}",
                        "prompt": f"What did Alba sell in year {1000 + i}?",
                        "response": " Alba sold lanterns.",
                    }
                )
                + "\n"
                for i in range(4)
            )
        )
        out = tmp_path / "results.jsonl"
        rc = cli.main(
            [
                "--base-url",
                base,
                "batch",
                str(logs),
                "-o",
                str(out),
                "--top-k",
                "5",
                "--no-progress",
                "--report",
                str(tmp_path / "valuation"),
            ]
        )
        assert rc == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and all(line["error"] is None for line in lines)
    batch_ids = {ex["record_id"] for line in lines for ex in line["response"]["examples"]}
    assert batch_ids and batch_ids <= set(where)

    rows = list(csv.DictReader((tmp_path / "valuation.csv").open(encoding="utf-8")))
    providers = {row["key"]: row for row in rows if row["group_by"] == "provider"}
    assert set(providers) == {"acme", "globex", "initech"}
    for key, row in providers.items():
        assert row["corpus_examples"] == "12" and float(row["corpus_share"]) == pytest.approx(1 / 3)
        for record_id in row["top_records"].split():
            assert (
                where[record_id]["provider"] == key
            )  # the ids are the corpus's own, in the right group
    assert sum(float(row["share_of_positive"]) for row in providers.values()) == pytest.approx(1.0)
    md = (tmp_path / "valuation.md").read_text(encoding="utf-8")
    top = next(row["top_records"].split()[0] for row in providers.values() if row["top_records"])
    assert top in md and "![Influence share against corpus share per provider](valuation.svg)" in md
    assert (tmp_path / "valuation.svg").read_text(encoding="utf-8").startswith("<svg ")
