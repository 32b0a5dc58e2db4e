"""Per-position query terms: the whole ``[B, T, D_proj]`` block against the response positions only.

The saturated rankings need each response token's projected gradient term. Before, the hooks
filled a ``[B, T, D_proj]`` block for every position of the batch and the engine kept the
response positions; now they compute only the positions ``TokenBatch.emitting_mask`` selects. This
times both on a micro-batch of long-prompt queries through the service's own engine (no HTTP),
on the same 10k index as ``service_latency.py``, and reports the buffer each allocates.

    .venv/bin/python benchmarks/position_terms.py [--batch 32] [--records 9] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as `tributary serve` sets it
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "indexer")]

from benchmarks.service_latency import QUERY, build_real  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=32, help="queries in the micro-batch")
    ap.add_argument(
        "--records",
        type=int,
        default=9,
        help="corpus-like sentences in each query's prompt (its length)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tributary-latency-bench"
    )
    args = ap.parse_args()
    import torch
    from tributary_client.types import AttributionRequest
    from tributary_indexer.data.batching import collate
    from tributary_service.loading import load_service
    from tributary_service.settings import ServiceSettings

    torch.set_num_threads(os.cpu_count() or 1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    index, model = build_real(args.workdir, 10_000, 1024)
    loaded = load_service(
        ServiceSettings(
            index=index,
            model=model,
            state_dir=args.workdir / "state-positions",
            verify_checksums=False,
        )
    )
    engine = loaded.engine
    prompt = " ".join(
        f"Record {i}: the copper lantern goes to the north harbour market."
        for i in range(args.records)
    )
    queries = [
        engine.prepare(
            AttributionRequest(
                prompt=f"{prompt} {QUERY['prompt']} #{i}", response=QUERY["response"]
            )
        )
        for i in range(args.batch)
    ]
    batch = collate([q.tokens.example for q in queries], engine.pad_id)
    emitting = batch.emitting_mask  # [B, T]
    dim = engine.computer.hooks.projector.dim
    times: dict[str, list[float]] = {"all positions": [], "response positions": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        full = engine.computer.compute(batch, per_position=True)
        assert full.per_position is not None
        kept = full.per_position[emitting]
        times["all positions"].append(time.perf_counter() - t0)
        del full
        t0 = time.perf_counter()
        picked = engine.computer.compute(batch, positions=emitting).position_terms
        times["response positions"].append(time.perf_counter() - t0)
        assert picked is not None and torch.equal(picked, kept)
    rows = {"all positions": batch.input_ids.numel(), "response positions": int(emitting.sum())}
    print(
        f"# per-position terms — {platform.machine()}, {os.cpu_count()} cores; batch {args.batch} "
        f"× {batch.input_ids.shape[1]} tokens, {int(emitting.sum())} response positions, D_proj "
        f"{dim}; median of {args.repeats}"
    )
    print("| terms computed | rows | buffer MiB | gradient pass ms (median) | min–max ms |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        print(
            f"| {name} | {rows[name]:,} | {rows[name] * dim * 4 / 2**20:.1f} | "
            f"{statistics.median(ts) * 1000:.0f} | {min(ts) * 1000:.0f}–{max(ts) * 1000:.0f} |"
        )
    loaded.index.close()


if __name__ == "__main__":
    main()
