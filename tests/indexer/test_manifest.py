from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tributary_indexer.atomic_io import atomic_write_bytes, sha256_file
from tributary_indexer.build.manifest import (
    FORMAT_VERSION,
    DampingInfo,
    Manifest,
    ModelInfo,
    ProjectorInfo,
    ProjectorModule,
    ShardInfo,
    hash_model_files,
    hash_tokenizer,
    utc_timestamp,
)
from tributary_indexer.build.verification import verify_manifest
from tributary_indexer.errors import ConfigMismatchError, IndexIntegrityError, ModelLoadError


def make_index(root: Path, rows: tuple[int, ...] = (3, 2)) -> Manifest:
    shards = []
    start = 0
    for i, n in enumerate(rows):
        name = f"shards/shard-{i:05d}.faiss"
        (root / "shards").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(root / name, f"vectors {i}".encode())
        shards.append(
            ShardInfo(
                file=name, rows=n, id_start=start, id_end=start + n, sha256=sha256_file(root / name)
            )
        )
        start += n
    atomic_write_bytes(root / "projector.safetensors", b"projector")
    manifest = Manifest(
        package_version="0.1.0",
        model=ModelInfo(
            path="/models/gpt2", config_sha256="c" * 64, weights_sha256="w" * 64, model_type="gpt2"
        ),
        tokenizer_sha256="t" * 64,
        projector=ProjectorInfo(
            kind="random",
            seed=0,
            modules=[
                ProjectorModule("h.0.mlp.c_fc", 768, 3072, 16, 16),
                ProjectorModule("h.0.attn.c_attn", 768, 2304, 16, 16),
            ],
            params={"rapidgrad_k": None},
        ),
        dim=512,
        dtype="float16",
        score_variant="relatif",
        damping=DampingInfo(
            alpha=0.001, lambdas={"h.0.mlp.c_fc": 1.5e-3, "h.0.attn.c_attn": 2.0e-4}
        ),
        shards=shards,
        n_examples=sum(rows),
        build_config={"max_tokens": 512, "corpus": ["a.jsonl"], "nested": {"b": 1, "a": [1, 2]}},
        files={"projector.safetensors": sha256_file(root / "projector.safetensors")},
        created_at="2024-01-01T00:00:00Z",
    )
    manifest.save(root)
    return manifest


def test_round_trip_is_byte_identical(tmp_path: Path) -> None:
    manifest = make_index(tmp_path)
    first = (tmp_path / "manifest.json").read_bytes()
    loaded = Manifest.load(tmp_path)
    assert loaded == manifest and loaded.format_version == FORMAT_VERSION
    other = tmp_path / "copy"
    other.mkdir()
    loaded.save(other)
    assert (other / "manifest.json").read_bytes() == first
    assert first.endswith(b"}\n") and json.loads(first)["dim"] == 512


def test_diff_fields_names_what_differs(tmp_path: Path) -> None:
    a = make_index(tmp_path)
    b = copy.deepcopy(a)
    assert a.diff_fields(b) == []
    b.model.weights_sha256 = "x" * 64
    b.projector.modules[1].k_in = 32
    b.damping.lambdas["h.0.mlp.c_fc"] = 9.0
    b.build_config["max_tokens"] = 1024
    b.created_at = "later"
    assert a.diff_fields(b) == [
        "model.weights_sha256",
        "projector.modules[1].k_in",
        "damping.lambdas.h.0.mlp.c_fc",
    ]
    assert a.diff_fields(b, fields=["build_config"]) == ["build_config.max_tokens"]
    assert "created_at" in a.diff_fields(b, fields=None)
    with pytest.raises(ConfigMismatchError) as info:
        a.check_compatible(b)
    message = str(info.value)
    assert "model.weights_sha256 ('wwww" in message and "fix: use the model" in message
    assert info.value.fields[0] == "model.weights_sha256"


def test_verify_clean_and_tampered(tmp_path: Path) -> None:
    make_index(tmp_path)
    assert verify_manifest(tmp_path) == []
    (tmp_path / "shards" / "shard-00001.faiss").write_bytes(b"tampered")
    problems = verify_manifest(tmp_path)
    assert problems == [
        "shards/shard-00001.faiss: sha256 mismatch (file changed or corrupt; rebuild or restore it)"
    ]
    assert verify_manifest(tmp_path, check_checksums=False) == []
    (tmp_path / "projector.safetensors").unlink()
    assert "projector.safetensors: missing" in verify_manifest(tmp_path)


def test_verify_counts_and_ranges(tmp_path: Path) -> None:
    manifest = make_index(tmp_path)
    manifest.n_examples = 6
    manifest.shards[1].id_start = 4
    manifest.shards[1].id_end = 6
    manifest.shards.append(ShardInfo("../outside.faiss", 0, 6, 6, "0" * 64))
    manifest.save(tmp_path)
    problems = verify_manifest(tmp_path)
    assert any("expected 3 (ranges must be contiguous)" in p for p in problems)
    assert any("rows sum to 5 but n_examples is 6" in p for p in problems)
    assert any("../outside.faiss: not a relative path" in p for p in problems)
    manifest.shards[0].rows = 2
    manifest.save(tmp_path)
    assert any("2 rows but id range [0, 3)" in p for p in verify_manifest(tmp_path))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(IndexIntegrityError, match="not a finished index"):
        Manifest.load(tmp_path)
    assert "not a finished index" in verify_manifest(tmp_path)[0]
    manifest = make_index(tmp_path)
    data = manifest.to_dict()
    data["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IndexIntegrityError, match="format_version 99.*fix: rebuild"):
        Manifest.load(tmp_path)
    data["format_version"] = FORMAT_VERSION
    del data["dim"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IndexIntegrityError, match="malformed"):
        Manifest.load(tmp_path)


def test_hash_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a local directory"):
        hash_model_files(tmp_path / "gpt2")
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelLoadError, match="no weight files"):
        hash_model_files(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "pytorch_model.bin").write_bytes(b"ignored when safetensors exist")
    info = hash_model_files(tmp_path)
    assert info.model_type == "gpt2" and info.config_sha256 == sha256_file(tmp_path / "config.json")
    assert info.weights_sha256 == hashlib.sha256(b"weights").hexdigest()
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"a")
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"b")
    sharded = hash_model_files(tmp_path)
    listing = "".join(
        f"{hashlib.sha256(d).hexdigest()}  model-0000{i}-of-00002.safetensors\n"
        for i, d in ((1, b"a"), (2, b"b"))
    )
    assert sharded.weights_sha256 == hashlib.sha256(listing.encode()).hexdigest()


def test_hash_tokenizer_stable(make_tiny_tokenizer: Callable[..., Any], tmp_path: Path) -> None:
    tok = make_tiny_tokenizer()
    digest = hash_tokenizer(tok)
    assert digest == hash_tokenizer(make_tiny_tokenizer()) and len(digest) == 64
    tok.save_pretrained(tmp_path)
    assert hash_tokenizer(tmp_path) == digest
    assert hash_tokenizer(make_tiny_tokenizer(chat_template=False)) != digest
    assert hash_tokenizer(make_tiny_tokenizer(bos=True)) != digest


def test_utc_timestamp_honours_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert utc_timestamp() == "1970-01-01T00:00:00Z"


def test_objective_of_an_index_older_than_the_field_is_nll(tmp_path: Path) -> None:
    manifest = make_index(tmp_path)
    manifest.build_config = {"score": "influence"}  # written before ``objective`` existed
    assert manifest.objective == "nll"
    manifest.build_config = {"objective": "margin"}
    assert manifest.objective == "margin"
