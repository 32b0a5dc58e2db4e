"""``tributary serve`` process setup that must happen before numpy loads."""

from __future__ import annotations

import os
import subprocess
import sys

from tributary_service.cli import quiet_blas_spin_waits


def test_openblas_threads_sleep_unless_the_operator_chose(monkeypatch):
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    quiet_blas_spin_waits()
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "4"
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "20")
    quiet_blas_spin_waits()
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "20"


def test_the_serve_command_line_does_not_load_numpy_before_setting_it():
    """OpenBLAS reads the variable once, when numpy loads: the CLI must not import numpy first."""
    code = ("import sys, tributary_client.cli, tributary_service.cli, tributary_service.settings; "
            "print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_service_offers_exactly_the_indexer_rankings():
    """``--ranking`` / ``TRIBUTARY_RANKING`` choices are the indexer's rankings, no more and no fewer."""
    from typing import get_args

    from tributary_indexer.token_ranking import RANKINGS
    from tributary_service.settings import Ranking

    assert get_args(Ranking) == RANKINGS
