"""OpenBLAS worker threads: let them sleep after each call so they leave the cores to the model."""

from __future__ import annotations

import os

OPENBLAS_SPIN_VARIABLE = "OPENBLAS_THREAD_TIMEOUT"


def quiet_blas_spin_waits() -> None:
    """Let OpenBLAS worker threads sleep as soon as a call ends, unless the operator chose
    otherwise.

    numpy's OpenBLAS scans the flat shards; by default its workers then spin for ~2^28 cycles
    (about 0.1 s), fighting the model's next forward/backward for the cores. On 2 cores that
    doubled the query gradient (56 vs 27 ms, ``benchmarks/RESULTS.md``). OpenBLAS reads the
    variable once, when numpy loads it, so this must run before anything imports numpy.
    """
    os.environ.setdefault(OPENBLAS_SPIN_VARIABLE, "4")  # 2^4 cycles: the smallest OpenBLAS accepts
