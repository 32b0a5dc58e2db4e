"""Tokens/s of projected-gradient logging vs a plain training step, and vs LogIX.

One run measures, on the same model, batches and torch threads:

- ``train step``: forward + summed-token loss + ``backward()`` into every parameter gradient,
  no optimizer (the reference);
- ``tributary rRxR``: :class:`tributary_indexer.gradients.computer.GradientComputer` logging
  LoGra-projected per-example gradients (random projections, rank R×R) on every linear module
  (GPT-2's ``Conv1D`` natively, and ``lm_head``);
- ``hook-free bound`` (``--bound``): the same forward and log-odds loss with every parameter
  frozen and backward through input gradients only, no hooks and no projections: the ceiling
  that hook engineering alone cannot pass;
- ``LogIX rRxR`` (``logix-ai==0.1.1``, the LoGra authors' library, benchmark-only extra
  ``make bench-peers``): the same model with ``Conv1D`` swapped for equivalent ``nn.Linear``
  (LogIX only watches ``nn.Linear``), LoGra rank R×R on every ``nn.Linear``, no disk writes.

Timing: methods are interleaved within each repeat (so load drifts hit all alike) and the median
pass time is reported. Usage::

    .venv/bin/python benchmarks/logging_throughput.py            # tiny + GPT-2-small, ranks 16 & 64
    .venv/bin/python benchmarks/logging_throughput.py --sizes tiny --repeats 21 --no-logix --bound
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "indexer")]

from tributary_indexer.data.batching import TokenBatch, TokenizedExample, collate  # noqa: E402
from tributary_indexer.gradients.computer import GradientComputer  # noqa: E402
from tributary_indexer.gradients.hooks import frozen_parameters  # noqa: E402
from tributary_indexer.gradients.module_selection import select_modules  # noqa: E402
from tributary_indexer.gradients.objectives import objective_losses  # noqa: E402
from tributary_indexer.gradients.projector import LoGraProjector, ProjectionConfig  # noqa: E402

from benchmarks.peers.logix_runner import make_batches  # noqa: E402

SIZES = {
    # name: (GPT2Config kwargs, batch size, sequence length, batches per pass)
    # micro: so small that attention, GELU and softmax (the same in every method) dominate
    "micro": (dict(n_embd=128, n_layer=2, n_head=4, vocab_size=1024, n_positions=128), 8, 128, 4),
    # tiny: the size of the demo model (4 layers, width 256, 4k vocabulary; 4.3M parameters)
    "tiny": (dict(n_embd=256, n_layer=4, n_head=4, vocab_size=4096, n_positions=128), 8, 128, 4),
    "gpt2-small": (dict(), 4, 128, 2),  # GPT2Config() defaults: 124M parameters
}


def _our_batches(batches: list[dict]) -> list[TokenBatch]:
    return [
        collate([TokenizedExample.document(row.tolist()) for row in b["input_ids"]])
        for b in batches
    ]


def _train_step(model: torch.nn.Module, batches: list[TokenBatch]) -> Callable[[], None]:
    """The plain Hugging Face training step: ``model(input_ids, labels=...)``,
    ``loss.backward()``."""
    labels = [b.input_ids.clone() for b in batches]

    def run() -> None:
        for b, y in zip(batches, labels):
            model.zero_grad(set_to_none=True)
            model(input_ids=b.input_ids, labels=y, use_cache=False).loss.backward()

    return run


def _ours(
    model: torch.nn.Module, batches: list[TokenBatch], rank: int
) -> tuple[Callable[[], None], Callable[[], None]]:
    modules = select_modules(model)
    projector = LoGraProjector.random(modules, ProjectionConfig(rank_in=rank, rank_out=rank))
    computer = GradientComputer(model, modules, projector)
    computer.hooks.release()  # registered only while this method runs

    def run() -> None:
        computer.hooks.register()
        for b in batches:
            computer.compute(b)
        computer.hooks.release()

    return run, computer.close


def _hook_free_bound(
    model: torch.nn.Module, batches: list[TokenBatch], objective: str
) -> Callable[[], None]:
    """Forward + the logging objective, backward through input gradients only (no weight gradients,
    no hooks): the token embeddings are the one leaf that requires grad."""

    def leaf(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        return output.detach().requires_grad_(True)

    def run() -> None:
        handle = model.get_input_embeddings().register_forward_hook(leaf)
        try:
            with frozen_parameters(model):
                for b in batches:
                    logits = model(input_ids=b.input_ids, use_cache=False).logits
                    objective_losses(objective, logits, b.input_ids, b.target_mask)[
                        0
                    ].sum().backward()
        finally:
            handle.remove()

    return run


def _logix(model: torch.nn.Module, raw_batches: list[dict], rank: int, repeats: int) -> dict | None:
    try:
        import logix  # noqa: F401

        from benchmarks.peers.logix_runner import measure_logix
    except ImportError as exc:
        logging.warning("LogIX not installed (%s): run `make bench-peers` for its rows", exc)
        return None
    return measure_logix(model, raw_batches, rank, warmup=1, repeats=repeats)


def measure_size(
    name: str, ranks: list[int], repeats: int, with_logix: bool, with_bound: bool = False
) -> list[dict]:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg_kwargs, bsz, seq, n_batches = SIZES[name]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**cfg_kwargs)).eval()
    raw = make_batches(model.config.vocab_size, n_batches, bsz, seq)
    batches = _our_batches(raw)
    tokens = bsz * seq * n_batches
    methods: dict[str, Callable[[], None]] = {"train step": _train_step(model, batches)}
    closers = []
    if with_bound:
        objective = (
            inspect.signature(GradientComputer).parameters["objective"].default
        )  # what the logging rows differentiate
        methods["hook-free bound"] = _hook_free_bound(model, batches, objective)
    for rank in ranks:
        run, close = _ours(model, batches, rank)
        methods[f"tributary r{rank}x{rank}"] = run
        closers.append(close)
    times: dict[str, list[float]] = {k: [] for k in methods}
    for fn in methods.values():  # warm-up
        fn()
    for _ in range(repeats):
        for key, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    for close in closers:
        close()
    rows = []
    base = tokens / statistics.median(times["train step"])
    params = sum(p.numel() for p in model.parameters())
    for key, ts in times.items():
        tps = tokens / statistics.median(ts)
        rows.append(
            dict(
                size=name,
                params=params,
                method=key,
                tokens_per_s=tps,
                vs_train=tps / base,
                times=ts,
            )
        )
    if with_logix:
        for rank in ranks:
            r = _logix(model, raw, rank, repeats)
            if r is not None:
                rows.append(
                    dict(
                        size=name,
                        params=params,
                        method=f"LogIX r{rank}x{rank}",
                        tokens_per_s=r["tokens_per_s"],
                        vs_train=r["tokens_per_s"] / base,
                        times=r["times"],
                    )
                )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="micro,tiny,gpt2-small")
    ap.add_argument("--ranks", default="16,64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-logix", action="store_true")
    ap.add_argument(
        "--bound",
        action="store_true",
        help="also time the hook-free bound (frozen parameters, input gradients only)",
    )
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    ranks = [int(r) for r in args.ranks.split(",")]
    print(
        f"# logging throughput — {platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"cores, torch {torch.__version__} ({args.threads} threads), python "
        f"{platform.python_version()}"
    )
    print("| size | params | method | tokens/s | × train step |")
    print("|---|---|---|---|---|")
    all_rows = []
    for size in args.sizes.split(","):
        rows = measure_size(size, ranks, args.repeats, not args.no_logix, args.bound)
        for r in rows:
            print(
                f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['method']} | "
                f"{r['tokens_per_s']:.0f} | {r['vs_train']:.2f} |",
                flush=True,
            )
        all_rows += rows
    print(f"load average after run: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=2))


if __name__ == "__main__":
    main()
