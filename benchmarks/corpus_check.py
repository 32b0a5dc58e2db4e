"""What the corpus check costs a build: one extra read of every record before the model loads.

:func:`tributary_indexer.data.corpus_check.check_corpus` parses every record and hashes every
record id (8 bytes each, sorted to find repeats). This times it over generated JSONL corpora of
documents with string ids (optionally with one repeated id under ``--skip-bad``, which adds the
second read that locates repeats), and reports records per second and the peak memory it adds.

    .venv/bin/python benchmarks/corpus_check.py [--records 200000] [--words 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "indexer")]

from tributary_indexer.data.corpus_check import check_corpus  # noqa: E402


def write_corpus(path: Path, records: int, words: int, repeat_id: bool) -> None:
    """``records`` documents of ``words`` words with ids ``rec-N`` (the last one reuses
    ``rec-0``)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(records):
            record_id = "rec-0" if repeat_id and i == records - 1 else f"rec-{i}"
            f.write(
                json.dumps(
                    {
                        "id": record_id,
                        "text": " ".join(f"w{(i * 7 + j) % 997}" for j in range(words)),
                        "provider": f"p{i % 4}",
                    }
                )
                + "\n"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--words", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for repeat_id in (False, True):
            path = Path(tmp) / f"corpus-{repeat_id}.jsonl"
            write_corpus(path, args.records, args.words, repeat_id)
            size_mb = path.stat().st_size / 1e6
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                check = check_corpus([path], skip_bad=repeat_id)
                times.append(time.perf_counter() - t0)
            tracemalloc.start()
            check_corpus([path], skip_bad=repeat_id)
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            best, median = min(times), statistics.median(times)
            label = "one repeated id (--skip-bad: second read)" if repeat_id else "unique ids"
            print(
                f"{label}: {check.stats.records:,} records, {size_mb:.1f} MB: median {median:.2f} "
                f"s ({check.stats.records / median:,.0f} records/s), best {best:.2f} s, peak "
                f"traced memory {peak:.1f} MiB, repeated ids found: {len(check.duplicate_ids)}"
            )


if __name__ == "__main__":
    main()
