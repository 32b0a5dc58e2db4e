"""`tributary index build|plan|add|verify` through the command line entry point."""

from __future__ import annotations

import json

import pytest
from tributary_indexer.cli import main

from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return (
        build_model_dir(root / "model"),
        write_jsonl(root / "a.jsonl", corpus_records(40)),
        write_jsonl(root / "b.jsonl", corpus_records(50)[40:]),
    )


def test_build_verify_add_plan(inputs, tmp_path, capsys):
    model, a, b = inputs
    out = tmp_path / "idx"
    config = tmp_path / "build.json"
    config.write_text(json.dumps({"rank_in": 4, "rank_out": 4, "shard_size": 16}))
    assert (
        main(
            [
                "build",
                "--model",
                str(model),
                "--corpus",
                str(a),
                "--out",
                str(out),
                "--config",
                str(config),
                "--rank-out",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "examples: 40" in printed and "bytes/example" in printed
    stored = json.loads((out / "build_config.json").read_text())
    assert (
        stored["rank_in"] == 4 and stored["rank_out"] == 2 and stored["shard_size"] == 16
    )  # flags override the file
    assert main(["verify", str(out)]) == 0 and "OK" in capsys.readouterr().out
    assert main(["add", "--index", str(out), "--corpus", str(b), "--no-progress"]) == 0
    assert json.loads((out / "manifest.json").read_text())["n_examples"] == 50
    assert main(["verify", str(out)]) == 0
    shard = out / "shards" / "shard-00000.faiss"
    shard.write_bytes(shard.read_bytes()[:-8] + b"tampered")
    assert main(["verify", str(out)]) == 1
    assert "shard-00000.faiss: sha256 mismatch" in capsys.readouterr().out
    assert main(["plan", "--model", str(model), "--corpus", str(a), "--timed-batches", "1"]) == 0
    plan = capsys.readouterr().out
    assert (
        "examples: 40" in plan
        and "estimated time" in plan
        and "disk:" in plan
        and "peak RAM" in plan
    )


def test_errors_are_one_line_with_the_fix(inputs, tmp_path, capsys):
    model, a, _ = inputs
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rank": 4}))
    assert (
        main(
            [
                "build",
                "--model",
                str(model),
                "--corpus",
                str(a),
                "--out",
                str(tmp_path / "x"),
                "--config",
                str(bad),
            ]
        )
        == 2
    )
    assert "unknown build configuration fields ['rank']" in capsys.readouterr().err
    assert (
        main(
            [
                "build",
                "--model",
                str(model),
                "--corpus",
                str(a),
                "--out",
                str(tmp_path / "y"),
                "--score",
                "dot",
            ]
        )
        == 2
    )
    assert "score='dot'" in capsys.readouterr().err
    assert main(["add", "--index", str(tmp_path / "nothing"), "--corpus", str(a)]) == 2
    assert "holds no finished index" in capsys.readouterr().err
    assert main(["build", "--out", str(tmp_path / "z")]) == 2
    assert "--model and --corpus are required" in capsys.readouterr().err


def test_rapidgrad_is_on_by_default_capped_at_the_projected_dimension_and_can_be_turned_off(
    inputs, tmp_path, capsys
):
    model, a, _ = inputs
    base = [
        "build",
        "--model",
        str(model),
        "--corpus",
        str(a),
        "--rank-in",
        "4",
        "--rank-out",
        "4",
        "--no-progress",
    ]
    assert main([*base, "--out", str(tmp_path / "default")]) == 0
    manifest = json.loads((tmp_path / "default" / "manifest.json").read_text())
    projected = sum(m["k_in"] * m["k_out"] for m in manifest["projector"]["modules"])
    assert projected < 4096  # the tiny model's LoGra vector is shorter than the default K
    assert manifest["projector"]["params"]["rapidgrad"]["k"] == projected == manifest["dim"]
    assert (
        json.loads((tmp_path / "default" / "build_config.json").read_text())["rapidgrad_k"] == 4096
    )  # as asked
    assert main([*base, "--out", str(tmp_path / "off"), "--rapidgrad-k", "off"]) == 0
    manifest = json.loads((tmp_path / "off" / "manifest.json").read_text())
    assert "rapidgrad" not in manifest["projector"]["params"] and manifest["dim"] == projected
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--out", str(tmp_path / "bad"), "--rapidgrad-k", "many"])
    assert (
        exit_info.value.code == 2
        and "expected a number of dims or 'off', got 'many'" in capsys.readouterr().err
    )
    assert not (tmp_path / "bad").exists()
