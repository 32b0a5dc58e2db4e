"""``tributary serve`` process setup that must happen before numpy loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tributary_service.blas_threads import quiet_blas_spin_waits


def test_openblas_threads_sleep_unless_the_operator_chose(monkeypatch):
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    quiet_blas_spin_waits()
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "4"
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "20")
    quiet_blas_spin_waits()
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "20"


def test_the_serve_command_line_does_not_load_numpy_before_setting_it():
    """OpenBLAS reads the variable once, when numpy loads: the CLI must not import numpy first."""
    code = (
        "import sys, tributary_client.cli, tributary_service.cli, tributary_service.settings; "
        "print('numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_service_offers_exactly_the_indexer_rankings():
    """``--ranking`` / ``TRIBUTARY_RANKING`` choices are the indexer's rankings, no more and no
    fewer."""
    from typing import get_args

    from tributary_indexer.config import RANKINGS
    from tributary_service.settings import Ranking

    assert get_args(Ranking) == RANKINGS


def _serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRIBUTARY_")}
    return subprocess.run(
        [sys.executable, "-m", "tributary_service.cli", *args],
        capture_output=True,
        text=True,
        env={**environ, **env},
        timeout=120,
    )


def test_serve_without_an_index_says_what_to_pass():
    out = _serve()
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "tributary serve: no index to serve; pass --index DIR (a directory written by "
        "`tributary index build --out DIR`) or set TRIBUTARY_INDEX=DIR"
    )
    out = _serve("--index", "somewhere", TRIBUTARY_MAX_TOP_K="lots")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--max-top-k (TRIBUTARY_MAX_TOP_K):" in out.stderr


def test_faiss_cpu_probing_is_not_logged_at_start_up(tmp_path):
    """faiss probes AVX512/AVX2 builds and logs each ModuleNotFoundError at INFO: not at
    start-up."""
    code = (
        "import logging, sys; from tributary_service import cli; "
        "sys.argv = ['x']; logging.basicConfig(level=logging.INFO); "
        "cli.main(['--index', sys.argv[0] + '-missing', '--log-level', 'info']); import faiss"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ModuleNotFoundError" not in out.stderr and "faiss.loader" not in out.stderr, out.stderr


def test_gpu_search_without_a_gpu_exits_with_the_fix(tmp_path):
    from tributary_indexer.query.gpu_placement import gpu_count

    if gpu_count() > 0:
        pytest.skip("a GPU is present: GPU search is available")
    for out in (
        _serve("--index", str(tmp_path), "--search-device", "gpu"),
        _serve("--index", str(tmp_path), TRIBUTARY_SEARCH_DEVICE="gpu"),
    ):
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert "GPU search was asked for" in out.stderr and "--search-device cpu" in out.stderr
    out = _serve("--index", str(tmp_path), TRIBUTARY_SEARCH_DEVICE="tpu")
    assert out.returncode == 2 and "--search-device (TRIBUTARY_SEARCH_DEVICE):" in out.stderr
