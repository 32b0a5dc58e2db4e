"""Fact tracing (TrackStar-style): recall@1, recall@10 and MRR of the documents stating a fact,
for held-out questions about it, on the demo corpus and model.

    .venv/bin/python -m benchmarks.quality.fact_tracing [--quick] [--refresh] [--no-write]
"""

from __future__ import annotations

from .retrieval import main

if __name__ == "__main__":
    main("fact_tracing")
