"""What ``span_gated``'s selective core costs the service: loading the reference sample, and
counting shares.

The selective core (:mod:`tributary_indexer.query.ranking`) counts, per query token, the share of
a fixed reference sample of stored vectors it matches. This times, on a built index, the sample's
one-off load (:meth:`AttributionIndex.reference`) and :meth:`SpanGatedRanking.matched_shares` for
batches of random standardised token vectors, against the index's own sample and a full
4,096-row one (what an index of more than 4,096 examples keeps).

    .venv/bin/python benchmarks/reference_sample_cost.py demo/index [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "indexer")]

from tributary_indexer.config import RankingConfig  # noqa: E402
from tributary_indexer.query.index import AttributionIndex  # noqa: E402
from tributary_indexer.query.ranking import SpanGatedRanking  # noqa: E402

REFERENCE_ROWS = RankingConfig.reference_rows


def median_ms(
    ranking: SpanGatedRanking, vectors: torch.Tensor, reference: torch.Tensor, repeats: int
) -> tuple[float, float]:
    """Median and best milliseconds of ``matched_shares(vectors, reference)`` over ``repeats``
    calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ranking.matched_shares(vectors, reference)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index", type=Path, help="a built index whose ranking is span_gated")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    index = AttributionIndex(args.index)
    ranking = index.ranking
    if not isinstance(ranking, SpanGatedRanking) or not ranking.needs_reference:
        sys.exit(
            f"{args.index} is ranked {ranking.name!r}; this measures span_gated's selective core"
        )
    t0 = time.perf_counter()
    reference = index.reference()
    assert reference is not None
    print(
        f"index {args.index}: {index.n_examples} examples, D = {index.dim}; reference sample "
        f"{tuple(reference.shape)} ({reference.numel() * 4 / 2**20:.0f} MiB) loaded in "
        f"{(time.perf_counter() - t0) * 1e3:.1f} ms"
    )
    gen = torch.Generator().manual_seed(0)
    full = torch.randn(REFERENCE_ROWS, index.dim, generator=gen)
    for n_tokens in (8, 16, 32):
        vectors = torch.randn(n_tokens, index.dim, generator=gen, dtype=torch.float64)
        own, own_best = median_ms(ranking, vectors, reference, args.repeats)
        big, big_best = median_ms(ranking, vectors, full, args.repeats)
        print(
            f"{n_tokens} tokens: {own:.2f} ms (best {own_best:.2f}) against the index's sample, "
            f"{big:.2f} ms (best {big_best:.2f}) against {REFERENCE_ROWS} rows"
        )


if __name__ == "__main__":
    main()
