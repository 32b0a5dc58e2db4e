"""A tiny real index (random GPT-2, generated corpus) shared by the service tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl


@pytest.fixture(scope="session")
def built_index(tmp_path_factory) -> tuple[Path, Path]:
    from tributary_indexer.build.builder import IndexBuilder
    from tributary_indexer.config import BuildConfig

    root = tmp_path_factory.mktemp("service-index")
    model = build_model_dir(root / "model", "gpt2")
    corpus = write_jsonl(root / "corpus.jsonl", corpus_records(60))
    config = BuildConfig(
        model=str(model),
        corpus=[str(corpus)],
        rank_in=4,
        rank_out=4,
        shard_size=25,
        progress=False,
        damping=0.01,
    )
    IndexBuilder(config, root / "index").build()
    return root / "index", model


@pytest.fixture()
def make_settings(built_index, tmp_path):
    from tributary_service.settings import ServiceSettings

    index, model = built_index

    def make(**overrides):
        base = dict(index=index, model=model, state_dir=tmp_path / "state", batch_window_ms=1.0)
        base.update(overrides)
        return ServiceSettings(**base)

    return make


@pytest.fixture()
def client(make_settings):
    from fastapi.testclient import TestClient
    from tributary_service.app import create_app

    with TestClient(create_app(make_settings())) as c:
        yield c
