"""Startup refuses an index that does not fit the model, or whose files are damaged or missing."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from tributary_indexer.errors import ConfigMismatchError, IndexIntegrityError
from tributary_service.app import create_app
from tributary_service.settings import ServiceSettings

from tests.index_fixtures import build_model_dir
from tests.service.live_server import server_env


@pytest.fixture()
def index_copy(built_index, tmp_path):
    index, model = built_index
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    return copy, model


def _start(settings: ServiceSettings) -> None:
    with TestClient(create_app(settings)):
        pass


def test_other_model_is_refused_naming_the_hashes(index_copy, tmp_path):
    index, _ = index_copy
    other = build_model_dir(
        tmp_path / "other", "gpt2", seed=1
    )  # same shapes and tokenizer, other weights
    with pytest.raises(ConfigMismatchError) as err:
        _start(ServiceSettings(index=index, model=other, state_dir=tmp_path / "s"))
    assert "model.weights_sha256" in str(err.value) and "model.config_sha256" not in str(err.value)


def test_tampered_shard_and_missing_files_are_refused(index_copy, tmp_path):
    index, model = index_copy
    shard = index / "shards" / "shard-00001.faiss"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match="shard-00001.faiss: sha256 mismatch"):
        _start(ServiceSettings(index=index, model=model, state_dir=tmp_path / "s"))
    (index / "hessian.safetensors").unlink()
    with pytest.raises(IndexIntegrityError, match="hessian.safetensors: missing"):
        _start(
            ServiceSettings(
                index=index, model=model, state_dir=tmp_path / "s", verify_checksums=False
            )
        )


def test_serve_command_exits_with_the_reason(index_copy, tmp_path):
    index, model = index_copy
    (index / "manifest.json").unlink()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tributary_service.cli",
            "--index",
            str(index),
            "--model",
            str(model),
            "--port",
            "0",
        ],
        env=server_env(TRIBUTARY_STATE_DIR=str(tmp_path / "s")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "not a finished index" in proc.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "tributary_service.cli"],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "index" in missing.stderr
