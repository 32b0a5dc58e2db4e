"""Index build integration: real tiny models, real FAISS shards and SQLite, against brute force."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tributary_indexer.build.builder import IndexBuilder
from tributary_indexer.build.distributed import DistributedContext
from tributary_indexer.build.gradient_pass import token_budget_batches
from tributary_indexer.build.summary import BuildSummary
from tributary_indexer.build.verification import verify_index
from tributary_indexer.config import BuildConfig, RankingConfig
from tributary_indexer.data.batching import collate
from tributary_indexer.data.example_store import ExampleStore
from tributary_indexer.data.tokenization import tokenize_query
from tributary_indexer.errors import (
    ConfigMismatchError,
    CorpusError,
    IndexIntegrityError,
    ModelLoadError,
    ModuleSelectionError,
    OutputDirectoryError,
)
from tributary_indexer.gradients.computer import GradientComputer
from tributary_indexer.gradients.module_selection import select_modules
from tributary_indexer.model_loading import load_causal_lm, load_tokenizer
from tributary_indexer.query.index import AttributionIndex
from tributary_indexer.query.ranking import LinearRanking, SpanGatedRanking

from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    model = build_model_dir(root / "model", "gpt2")
    corpus = write_jsonl(root / "corpus.jsonl", corpus_records(60))
    extra = write_jsonl(root / "extra.jsonl", corpus_records(90)[60:])
    return root, model, corpus, extra


def _config(model: Path, corpus: list[Path], **kw) -> BuildConfig:
    base = dict(
        model=str(model),
        corpus=[str(c) for c in corpus],
        rank_in=4,
        rank_out=4,
        shard_size=25,
        progress=False,
    )
    base.update(kw)
    return BuildConfig(**base)


def _query_gradient(
    index: AttributionIndex, model_dir: Path, prompt: str, response: str
) -> torch.Tensor:
    model = load_causal_lm(model_dir, torch.device("cpu"))
    tokenizer = load_tokenizer(model_dir)
    modules = select_modules(model, include=[p.name for p in index.projector.projections])
    tokens = tokenize_query(prompt, response, tokenizer, max_tokens=512)
    with GradientComputer(model, modules, index.projector) as computer:
        return computer.compute(collate([tokens.example], tokenizer.pad_token_id)).vectors


@pytest.mark.parametrize("score", ["relatif", "influence", "cosine", "grad_dot"])
def test_build_then_search_equals_brute_force(workspace, tmp_path, score):
    root, model, corpus, _ = workspace
    out = tmp_path / "idx"
    config = _config(model, [corpus], score=score, damping=0.01)
    summary = IndexBuilder(config, out, keep_staging=True).build()
    assert summary.examples == 60 and summary.shards == 3
    assert verify_index(out) == []
    index = AttributionIndex(out)
    g = _query_gradient(index, model, "What does Alba sell?", " Alba sells lanterns.")
    q = index.space.query(g).float().numpy()
    got = index.search(q, k=10)
    # brute force: the score transform applied to the staged raw vectors, then a dense scan
    raw = np.concatenate([np.load(p) for p in sorted((out / "staging").glob("chunk-*.npy"))])
    stored = index.transform.train(torch.from_numpy(raw))[0].numpy()
    scores = stored @ q[0].astype(np.float64)
    want = np.argsort(-scores, kind="stable")[:10]
    assert got.ids[0].tolist() == want.tolist(), (got.scores[0], scores[want])
    np.testing.assert_allclose(got.scores[0], scores[want], rtol=1e-4, atol=1e-5)
    # a micro-batch of queries (another scan path) gives every row its own brute-force answer
    batch = np.stack(
        [q[0], -q[0], np.random.default_rng(0).standard_normal(q.shape[1]).astype(np.float32)]
    )
    got_batch = index.search(batch, k=10)
    for row, v in enumerate(batch):
        row_scores = stored @ v.astype(np.float64)
        assert got_batch.ids[row].tolist() == np.argsort(-row_scores, kind="stable")[:10].tolist()
    # more hits asked than examples: no -1 leaks into real results, the tail is -1
    all_hits = index.search(q, k=75)
    assert sorted(all_hits.ids[0][:60].tolist()) == list(range(60))
    assert (all_hits.ids[0][60:] == -1).all()
    index.close()


def test_store_manifest_and_add(workspace, tmp_path):
    root, model, corpus, extra = workspace
    out = tmp_path / "idx"
    IndexBuilder(_config(model, [corpus]), out).build()
    assert not (out / "staging").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_examples"] == 60 and manifest["score_variant"] == "influence"
    assert [s["id_start"] for s in manifest["shards"]] == [0, 25, 50]
    with ExampleStore(out / "examples.sqlite") as store:
        first = store.get(1)
        assert (
            first.external_id == "qa-1"
            and first.kind == "prompt_response"
            and first.provider == "globex"
        )
        assert first.metadata == {"topic": "trade"}
        assert len(store.ids_matching(provider="acme")) == 20
    hessian_before = (out / "hessian.safetensors").read_bytes()
    IndexBuilder(_config(model, [extra]), out).add()
    assert verify_index(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_examples"] == 90 and len(manifest["shards"]) == 5
    assert manifest["build_config"]["additions"][0]["id_start"] == 60
    assert (out / "hessian.safetensors").read_bytes() == hessian_before  # frozen
    with ExampleStore(out / "examples.sqlite") as store:
        assert (
            store.count() == 90
            and store.get(89).external_id == "qa-88"
            or store.get(89) is not None
        )


def test_rebuild_into_finished_index_is_a_no_op_and_mismatch_is_refused(workspace, tmp_path):
    root, model, corpus, _ = workspace
    out = tmp_path / "idx"
    IndexBuilder(_config(model, [corpus]), out).build()
    before = (out / "manifest.json").read_bytes()
    IndexBuilder(_config(model, [corpus]), out).build()
    assert (out / "manifest.json").read_bytes() == before
    with pytest.raises(ConfigMismatchError) as err:
        IndexBuilder(_config(model, [corpus], rank_in=8, score="cosine"), out).build()
    assert "rank_in" in str(err.value) and "score" in str(err.value)
    assert (out / "manifest.json").read_bytes() == before  # nothing stored was touched


def test_pca_projector_and_rapidgrad_and_llama(workspace, tmp_path):
    root, _, corpus, _ = workspace
    llama = build_model_dir(tmp_path / "llama", "llama")
    out = tmp_path / "idx"
    IndexBuilder(
        _config(llama, [corpus], projector="pca", pca_examples=20, rapidgrad_k=64), out
    ).build()
    assert verify_index(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["projector"]["kind"] == "pca" and manifest["dim"] == 64
    assert manifest["projector"]["params"]["rapidgrad"]["k"] == 64


def test_compressed_shards_rerank_with_exact_vectors(workspace, tmp_path):
    root, model, corpus, _ = workspace
    flat, ivf = tmp_path / "flat", tmp_path / "ivf"
    IndexBuilder(_config(model, [corpus]), flat).build()
    IndexBuilder(_config(model, [corpus], index_factory="IVF2,SQ8", train_examples=60), ivf).build()
    assert sorted(p.name for p in (ivf / "vectors").iterdir()) == [
        "shard-00000.npy",
        "shard-00001.npy",
        "shard-00002.npy",
    ]
    a, b = AttributionIndex(flat), AttributionIndex(ivf)
    b.rerank_factor = 100  # probe everything: the re-ranked result must equal the exact one
    b.set_nprobe(2)
    q = (
        a.space.query(_query_gradient(a, model, "Where does Cyra live?", " Cyra lives in Mebbe."))
        .float()
        .numpy()
    )
    exact, reranked = a.search(q, 5), b.search(q, 5)
    assert exact.ids.tolist() == reranked.ids.tolist()
    np.testing.assert_allclose(exact.scores, reranked.scores, rtol=1e-5)


def test_token_budget_batches_cover_everything_once():
    lengths = [5, 1, 9, 9, 3, 7, 2]
    batches = token_budget_batches(lengths, batch_tokens=18)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(len(b) * max(lengths[i] for i in b) <= 18 or len(b) == 1 for b in batches)


def test_stage_timer_adds_up_and_ranks_own_their_shards():
    summary = BuildSummary()
    for _ in range(2):
        with summary.timed("fisher"):
            time.sleep(0.01)
    with pytest.raises(ValueError), summary.timed("store"):
        raise ValueError("the time until a failure counts too")
    assert summary.stage_s["fisher"] >= 0.02 and "store" in summary.stage_s
    ranks = [DistributedContext(rank=r, world_size=3) for r in range(3)]
    owned = [ctx.owned(range(2, 9)) for ctx in ranks]
    assert owned == [[3, 6], [4, 7], [2, 5, 8]]


# ----------------------------------------------------------------------------- bad input
def test_malformed_jsonl_names_file_and_line_and_skip_bad_counts(workspace, tmp_path):
    root, model, corpus, _ = workspace
    bad = tmp_path / "bad.jsonl"
    lines = corpus.read_text().splitlines()
    lines[3] = '{"text": "unterminated'
    lines[7] = '{"title": "no text field"}'
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError) as err:
        IndexBuilder(_config(model, [bad]), tmp_path / "idx").build()
    assert "bad.jsonl" in str(err.value) and "line 4" in str(err.value)
    assert not (tmp_path / "idx" / "manifest.json").exists()
    summary = IndexBuilder(_config(model, [bad], skip_bad=True), tmp_path / "idx2").build()
    assert summary.skipped_bad == 2 and summary.examples == 58
    assert verify_index(tmp_path / "idx2") == []


def test_bad_model_module_and_output_errors(workspace, tmp_path):
    root, model, corpus, _ = workspace
    with pytest.raises(ModuleSelectionError, match="matches no trackable module"):
        IndexBuilder(_config(model, [corpus], include=["*.q_proj"]), tmp_path / "a").build()
    not_lm = tmp_path / "bert"
    from transformers import DistilBertConfig, DistilBertModel

    DistilBertModel(
        DistilBertConfig(vocab_size=50, dim=8, n_layers=1, n_heads=2, hidden_dim=8)
    ).save_pretrained(not_lm)
    with pytest.raises(ModelLoadError, match="not a causal LM"):
        IndexBuilder(_config(not_lm, [corpus]), tmp_path / "b").build()
    with pytest.raises(ModelLoadError, match="not a directory"):
        IndexBuilder(_config(tmp_path / "nope", [corpus]), tmp_path / "c").build()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.geteuid() != 0:  # root ignores permissions; the file-in-the-way case below still runs
            with pytest.raises(OutputDirectoryError):
                IndexBuilder(_config(model, [corpus]), locked / "idx").build()
    finally:
        locked.chmod(stat.S_IRWXU)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirectoryError):
        IndexBuilder(_config(model, [corpus]), tmp_path / "file").build()
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(OutputDirectoryError, match="not empty"):
        IndexBuilder(_config(model, [corpus]), other).build()
    assert (other / "precious.txt").read_text() == "keep me"


def test_disk_full_leaves_no_valid_looking_file(workspace, tmp_path, monkeypatch):
    import errno

    import tributary_indexer.build.shards as shards

    root, model, corpus, _ = workspace

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards.faiss, "write_index", full)
    out = tmp_path / "idx"
    with pytest.raises(OutputDirectoryError, match="disk full"):
        IndexBuilder(_config(model, [corpus]), out).build()
    assert not (out / "manifest.json").exists()
    assert not list((out / "shards").glob("*.faiss")) and not list((out / "shards").glob(".*tmp*"))
    monkeypatch.undo()
    IndexBuilder(_config(model, [corpus]), out).build()  # after freeing space the build resumes
    assert verify_index(out) == []


def test_examples_longer_than_the_model_context_are_truncated_there(workspace, tmp_path):
    """max_tokens above the model's 256 positions: the long document is cut at 256 and counted, not
    a crash."""
    _, model, _, _ = workspace
    corpus = write_jsonl(
        tmp_path / "long.jsonl", corpus_records(6) + [{"id": "long", "text": "word " * 400}]
    )
    out = tmp_path / "long-index"
    summary = IndexBuilder(_config(model, [corpus], max_tokens=512), out).build()
    assert summary.examples == 7 and summary.truncated == 1
    index = AttributionIndex(out)
    stored = index.store.get(6)
    assert stored.n_tokens == 256 and stored.n_truncated > 0
    assert verify_index(out) == []


def test_ranking_comes_from_the_manifest_and_can_be_overridden(workspace, tmp_path):
    _, model, corpus, _ = workspace
    sat, rel = tmp_path / "sat", tmp_path / "rel"
    IndexBuilder(_config(model, [corpus]), sat).build()
    IndexBuilder(_config(model, [corpus], score="relatif"), rel).build()
    manifest = json.loads((sat / "manifest.json").read_text())
    assert (
        manifest["build_config"]["ranking"] == "span_gated"
        and manifest["build_config"]["saturation"] == 30.0
    )
    assert manifest["build_config"]["candidates"] == 200  # every RankingConfig field is recorded
    assert AttributionIndex(sat).ranking == SpanGatedRanking(RankingConfig())
    assert AttributionIndex(
        sat, ranking={"saturation": 20.0, "candidates": 8}
    ).ranking_config == RankingConfig(saturation=20.0, candidates=8)
    assert AttributionIndex(sat, ranking="linear").ranking == LinearRanking(RankingConfig("linear"))
    assert (
        AttributionIndex(rel).ranking.name == "linear"
    )  # unset ranking + relatif resolved to linear at build time
    with pytest.raises(
        IndexIntegrityError,
        match="ranking 'span_gated' needs an index built with score 'influence'.*"
        "rebuild it with --score influence",
    ):
        AttributionIndex(rel, ranking="span_gated")
    with pytest.raises(
        IndexIntegrityError, match=r"ranking settings asked for: .*ranking='best' \(choose from"
    ):
        AttributionIndex(sat, ranking="best")
    with pytest.raises(IndexIntegrityError, match=r"presence_k=-1.0 \(must be a positive number"):
        AttributionIndex(sat, ranking={"presence_k": -1.0})
    # an index written before rankings existed has neither key: it keeps ranking linearly
    for key in RankingConfig().to_dict():
        del manifest["build_config"][key]
    (sat / "manifest.json").write_text(json.dumps(manifest))
    assert AttributionIndex(sat, verify_checksums=False).ranking.name == "linear"
    # a manifest naming a ranking this version does not offer is refused with the fix
    manifest["build_config"]["ranking"] = "token_saturated"
    (sat / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexIntegrityError, match=f"index {sat}: .*ranking='token_saturated'"):
        AttributionIndex(sat, verify_checksums=False)
    assert (
        AttributionIndex(sat, verify_checksums=False, ranking="span_gated").ranking.name
        == "span_gated"
    )
