"""A short load run: only 200s and 429s, no 5xx counted by the server (the long run is
``benchmarks/reliability.py``, 5,000 requests at concurrency 64 with RSS before and after)."""

from __future__ import annotations

from benchmarks.reliability import KEYS, run_load, server_errors


def test_a_load_run_gets_only_answers_and_busy_signals(keyed_server):
    run = run_load(keyed_server, KEYS[0], requests=300, concurrency=32)
    assert set(run.statuses) <= {200, 429} and run.statuses.get(200, 0) >= 150, run.statuses
    assert server_errors(keyed_server.base) == 0
