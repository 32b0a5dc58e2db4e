"""`tributary index plan`: its disk estimate covers every file a real build writes, at the right
size.

The plan measures a sample build of the corpus's first examples and extrapolates; here the
sample is a few examples of a 60-record corpus in three shards, so shards, store, manifest and
staging are all extrapolated, then compared with the real build of the whole corpus.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tributary_indexer.build.builder import IndexBuilder
from tributary_indexer.build.plan import estimate_build
from tributary_indexer.config import BuildConfig

from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl


def _kind(rel: str) -> str:
    if rel.startswith("shards/"):
        return "shards/shard-*.faiss"
    if rel.startswith("vectors/"):
        return "vectors/vectors-*.npy"
    return rel


@pytest.fixture(scope="module")
def planned_and_built(tmp_path_factory) -> tuple[object, Path, BuildConfig]:
    root = tmp_path_factory.mktemp("plan")
    model = build_model_dir(root / "model", "gpt2")
    corpus = write_jsonl(root / "corpus.jsonl", corpus_records(60))
    config = BuildConfig(
        model=str(model),
        corpus=[str(corpus)],
        rank_in=4,
        rank_out=4,
        shard_size=25,
        damping=0.01,
        batch_tokens=96,
        num_threads=1,
        progress=False,
    )
    plan = estimate_build(config, timed_batches=1, workdir=root)
    IndexBuilder(config, root / "index", keep_staging=True).build()
    return plan, root / "index", config


def test_disk_estimate_names_every_file_the_build_writes(planned_and_built) -> None:
    plan, index, _ = planned_and_built
    assert (
        plan.sample_examples < plan.examples == 60
    )  # the sample is extrapolated, not the whole corpus
    actual: dict[str, int] = {}
    for p in index.rglob("*"):
        rel = p.relative_to(index).as_posix()
        if p.is_file() and not rel.startswith("staging/"):
            actual[_kind(rel)] = actual.get(_kind(rel), 0) + p.stat().st_size
    assert set(plan.files) == set(
        actual
    )  # no file left out (the Fisher file among them), none invented
    assert "hessian.safetensors" in plan.files
    for kind, size in actual.items():
        # the store is sized from the sample's rows (the corpus's first few records here), the rest
        # exactly
        tolerance = 0.15 if kind == "examples.sqlite" else 0.02
        assert plan.files[kind] == pytest.approx(size, rel=tolerance, abs=512), kind
    assert plan.disk_bytes == sum(plan.files.values())
    assert plan.disk_bytes == pytest.approx(sum(actual.values()), rel=0.05)


def test_staging_and_shard_count(planned_and_built) -> None:
    plan, index, config = planned_and_built
    staged = sum(p.stat().st_size for p in (index / "staging").rglob("*") if p.is_file())
    assert plan.staging_bytes == pytest.approx(staged, rel=0.10)
    assert plan.shards == 3 and plan.dim > 0
    assert plan.seconds > 0 and set(plan.time_s) >= {
        "load",
        "gradients",
        "fisher",
        "precondition",
        "shards",
        "finish",
    }
    assert plan.ram_bytes > 0
    lines = "\n".join(plan.lines())
    assert "hessian.safetensors" in lines and "staging" in lines and "peak RAM" in lines


def test_build_progress_bar_has_a_total_and_an_eta(planned_and_built, tmp_path, capsys) -> None:
    _, _, config = planned_and_built
    from dataclasses import replace

    IndexBuilder(replace(config, progress=True), tmp_path / "index").build()
    err = capsys.readouterr().err
    assert "gradients: 100%" in err and "60/60 [" in err
    assert "<00:00" in err  # elapsed<remaining: tqdm prints an ETA only when it knows the total
