"""A build killed right after each temp file appears (before its rename), then rerun, ends
byte-identical to an uninterrupted build: no stale temp file kept, none counted; every index file
is written with the ordinary mode (readable by another uid); ``verify`` checks the model and
tokenizer, and refuses a shard with a wrong header or size by name even without checksums."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl
from tests.indexer.crash_window_driver import build_args

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "indexer"), str(ROOT)] + env.get("PYTHONPATH", "").split(os.pathsep)
    )
    env["SOURCE_DATE_EPOCH"] = "1790000000"  # reproducible created_at
    env["OMP_NUM_THREADS"] = "1"
    env.pop("TRIBUTARY_CRASH_AFTER_TEMP", None)
    env.update(extra)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tributary_indexer.cli", "--log-level", "WARNING", *args]


def _build(model: Path, corpus: Path, out: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        _cli(*build_args(model, corpus, out)[2:]),  # the driver's build, minus its log level
        env=_env(**env),
        timeout=300,
        capture_output=True,
    )


def _tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("windows")
    return build_model_dir(root / "model", "gpt2"), write_jsonl(
        root / "corpus.jsonl", corpus_records(24)
    )


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    model, corpus = inputs
    out = tmp_path_factory.mktemp("reference") / "idx"
    assert _build(model, corpus, out).returncode == 0
    return out


@pytest.mark.slow
def test_killed_after_every_temp_file_and_rerun_is_byte_identical(inputs, tmp_path):
    model, corpus = inputs
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.indexer.crash_window_driver",
            str(model),
            str(corpus),
            str(tmp_path),
        ],
        env=_env(),
        timeout=1200,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["reference_rc"] == 0
    windows = report["windows"]
    assert len(windows) >= 8, f"only {len(windows)} temp files: the hook did not fire"
    written = set()
    for window in windows:
        label = f"killed after temp file {window['n']} ({window['temps']})"
        assert window["rc"] == -signal.SIGKILL, label
        assert len(window["temps"]) == 1, f"{label}: expected the one temp file just written"
        written.add(window["temps"][0].split(".tmp-")[0])
        assert window["rerun_rc"] == 0, label
        assert not window["missing"] and not window["extra"] and not window["differ"], (
            label,
            window,
        )
    # the windows cover the big files the issue names, not only the small ones
    assert {"hessian.safetensors", "projector.safetensors", "examples.sqlite"} <= {
        Path(w).name.lstrip(".") for w in written
    }
    assert any(Path(w).name.startswith(".shard-") for w in written)


def test_index_files_are_world_readable_and_listed_bytes_only(reference):
    for path in reference.rglob("*"):
        if path.is_file():
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o044 == 0o044, (
                f"{path.name} is {oct(mode)}: another uid could not serve it"
            )
    manifest = json.loads((reference / "manifest.json").read_text())
    listed = sum((reference / s["file"]).stat().st_size for s in manifest["shards"]) + sum(
        (reference / name).stat().st_size for name in manifest["files"]
    )
    assert manifest["build_config"]["summary"]["bytes_per_example"] == pytest.approx(
        listed / manifest["n_examples"]
    )
    assert all(s["bytes"] == (reference / s["file"]).stat().st_size for s in manifest["shards"])


def test_verify_checks_the_model_and_shards_without_checksums(inputs, reference, tmp_path):
    model, _ = inputs
    assert (
        subprocess.run(
            _cli("verify", str(reference), "--model", str(model)), env=_env(), timeout=120
        ).returncode
        == 0
    )
    other = build_model_dir(tmp_path / "other", "gpt2", seed=1)
    out = subprocess.run(
        _cli("verify", str(reference), "--model", str(other), "--no-checksums"),
        env=_env(),
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert (
        out.returncode == 1
        and "model.weights_sha256" in out.stdout
        and "model.config_sha256" not in out.stdout
    )
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    shard = copy / "shards" / "shard-00001.faiss"
    original = shard.read_bytes()
    for damaged, needle in (
        (original + b"\0" * 64, "bytes, manifest says"),
        (b"XXXX" + original[4:], "does not start like a shard"),
        # IndexIDMap2's header: fourcc, d, ntotal, two dummies, is_trained (byte 32), metric (33-36)
        (original[:33] + bytes([original[33] ^ 0x01]) + original[34:], "metric"),
    ):
        shard.write_bytes(damaged)
        out = subprocess.run(
            _cli("verify", str(copy), "--no-checksums"),
            env=_env(),
            timeout=120,
            capture_output=True,
            text=True,
        )
        assert (
            out.returncode == 1
            and "shards/shard-00001.faiss" in out.stdout
            and needle in out.stdout
        ), out.stdout
    shard.write_bytes(original)
