"""Crash safety (real SIGKILLs of a build subprocess) and torchrun with 2 CPU processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
FILES = [
    "manifest.json",
    "build_config.json",
    "projector.safetensors",
    "hessian.safetensors",
    "examples.sqlite",
    "shards/shard-00000.faiss",
    "shards/shard-00001.faiss",
    "shards/shard-00002.faiss",
    "shards/shard-00003.faiss",
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return build_model_dir(root / "model", "gpt2"), write_jsonl(
        root / "corpus.jsonl", corpus_records(80)
    )


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "indexer"), str(ROOT)] + env.get("PYTHONPATH", "").split(os.pathsep)
    )
    env["SOURCE_DATE_EPOCH"] = "1790000000"  # reproducible created_at, as in reproducible builds
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _build_cmd(model: Path, corpus: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tributary_indexer.cli",
        "--log-level",
        "WARNING",
        "build",
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--rank-in",
        "4",
        "--rank-out",
        "4",
        "--shard-size",
        "20",
        "--no-progress",
        "--num-threads",
        "1",
        "--damping",
        "0.01",
    ]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in FILES}


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    model, corpus = inputs
    out = tmp_path_factory.mktemp("ref") / "idx"
    subprocess.run(_build_cmd(model, corpus, out), env=_env(), check=True, timeout=300)
    return _snapshot(out)


@pytest.mark.parametrize(
    "point",
    [
        "after_projector",
        "after_chunk_0",
        "after_chunk_2",
        "after_hessian",
        "after_shard_1",
        "before_manifest",
    ],
)
def test_sigkill_then_rerun_is_byte_identical(inputs, reference, tmp_path, point):
    model, corpus = inputs
    out = tmp_path / "idx"
    killed = subprocess.run(
        _build_cmd(model, corpus, out), env=_env(TRIBUTARY_CRASH_AT=point), timeout=300
    )
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    subprocess.run(_build_cmd(model, corpus, out), env=_env(), check=True, timeout=300)
    assert _snapshot(out) == reference
    assert not (out / "staging").exists()


def test_kill_at_a_random_moment_then_rerun(inputs, reference, tmp_path):
    """A kill from outside, at whatever the build is doing after a short while."""
    model, corpus = inputs
    out = tmp_path / "idx"
    proc = subprocess.Popen(_build_cmd(model, corpus, out), env=_env())
    deadline = time.time() + 120
    while (
        time.time() < deadline
        and not (out / "staging" / "chunk-00001.jsonl").exists()
        and proc.poll() is None
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    subprocess.run(_build_cmd(model, corpus, out), env=_env(), check=True, timeout=300)
    assert _snapshot(out) == reference


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_equals_one(inputs, reference, tmp_path):
    import faiss

    model, corpus = inputs
    out = tmp_path / "idx"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "tributary_indexer.cli",
    ] + _build_cmd(model, corpus, out)[3:]
    proc = subprocess.Popen(cmd, env=_env(), start_new_session=True)
    try:
        assert proc.wait(timeout=600) == 0
    finally:  # never leave ranks behind (a hung collective would outlive the test)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    single = tmp_path / "single"
    single.mkdir()
    for name in FILES:
        (single / name).parent.mkdir(parents=True, exist_ok=True)
        (single / name).write_bytes(reference[name])
    assert (out / "examples.sqlite").read_bytes() == reference["examples.sqlite"]
    assert (out / "projector.safetensors").read_bytes() == reference["projector.safetensors"]
    for shard in FILES[5:]:
        a, b = faiss.read_index(str(out / shard)), faiss.read_index(str(single / shard))
        ids_a = faiss.vector_to_array(a.id_map)
        assert ids_a.tolist() == faiss.vector_to_array(b.id_map).tolist()
        va = np.stack([a.reconstruct(int(i)) for i in ids_a])
        vb = np.stack([b.reconstruct(int(i)) for i in ids_a])
        np.testing.assert_allclose(va, vb, rtol=1e-4, atol=1e-6)
