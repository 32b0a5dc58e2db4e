"""Throughput of LogIX (``logix-ai==0.1.1``, the LoGra authors' library) logging LoGra-projected
per-example gradients, for side-by-side comparison in ``benchmarks/logging_throughput.py``.

Benchmark-only dependency (its metadata says Python<3.11, it runs fine on 3.11)::

    .venv/bin/pip install --ignore-requires-python --no-deps logix-ai==0.1.1
    .venv/bin/pip install einops pyyaml tqdm numpy

What LogIX does for LoGra (read from its source, v0.1.1):

* ``run.watch(model)`` registers every *leaf* ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` (so for
  GPT-2 after :func:`conv1d_to_linear`: every ``c_attn``, ``c_proj``, ``c_fc`` and ``lm_head``) and
  sets ``requires_grad=False`` on every other leaf's parameters (embeddings, LayerNorms).
* ``run.add_lora()`` wraps each watched Linear in ``LoraLinear``:
  ``y = W x + C(B(A x))`` with ``A: in->r`` and ``C: r->out`` kaiming-uniform random (the LoGra
  projections), ``B: r->r`` zero-initialised (so outputs are unchanged), ``r = min(rank, in, out)``.
  It then re-watches the model so that only the ``logix_lora_B`` modules are tracked (base weights,
  A and C get ``requires_grad=False``). The per-example gradient of ``B`` is the LoGra projected
  gradient ``C^T G_i^T ... A`` i.e. ``sum_t (C^T g_t)(A x_t)^T`` (an ``r x r`` matrix per module).
  ``add_lora`` always ``torch.save``\\ s the LoRA weights to ``<root_dir>/<project>/lora/``.
* ``run.setup({"grad": ["log"]})`` enables the ``Log`` plugin for gradients: a forward hook on each
  ``B`` registers a tensor hook on its output; in backward it computes
  ``einsum(bwd, fwd, "... i, ... j -> ... i j")`` summed over the token dim (it materialises the
  ``[batch, seq, r, r]`` outer product), and stores ``[batch, r, r]`` in ``run.binfo.log``
  (``run.get_log()`` returns ``(data_id, {module: {"grad": tensor}})``).
  Each ``with run(data_id=...)`` re-registers all hooks on enter.
* Saving: off unless ``run.save(True)`` / ``run(data_id, save=True)``. When on, ``__exit__`` copies
  each example's log into a host-side numpy buffer and only writes ``.mmap`` chunks to
  ``<root_dir>/<project>`` when the buffer exceeds ``logging.flush_threshold`` (default 1e9
  elements) or at ``run.finalize()`` (which also writes ``config.yaml`` and state files).
  ``LogIX(...)`` itself always ``makedirs`` ``<root_dir>/<project>`` (default root ``./logix``);
  we point ``root_dir`` at a temp dir that is deleted afterwards.

:func:`measure_logix` times the loop ``with run(data_id): zero_grad; loss.backward()`` with
saving off (default) so nothing touches disk inside the timed region; the loss is the LM
cross-entropy *summed* over tokens (and examples), identical to :func:`measure_train_step`.
"""

from __future__ import annotations

import copy
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:  # package-style import (python -m benchmarks.peers.logix_runner) or script-style
    from .linear_gpt2 import conv1d_to_linear
except ImportError:  # pragma: no cover
    from linear_gpt2 import conv1d_to_linear  # type: ignore[no-redef]

HFBatch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, HFBatch], torch.Tensor]


def summed_token_loss(model: nn.Module, batch: HFBatch) -> torch.Tensor:
    """Next-token cross-entropy summed over all tokens with ``labels != -100`` (default
    ``loss_fn``).

    A sum, not a mean, like ``tributary_indexer.gradients.objectives`` (so per-example gradients
    don't depend on the batch). Pass your own ``loss_fn(model, batch)`` to the ``measure_*``
    functions to override.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def _tokens(batches: Sequence[HFBatch]) -> int:
    return sum(int(b["input_ids"].numel()) for b in batches)


def _time_passes(
    step: Callable[[int, HFBatch], None], batches: Sequence[HFBatch], warmup: int, repeats: int
) -> list[float]:
    """Run ``warmup`` untimed passes then ``repeats`` timed passes over ``batches``."""
    for _ in range(warmup):
        for i, b in enumerate(batches):
            step(i, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i, b in enumerate(batches):
            step(i, b)
        times.append(time.perf_counter() - t0)
    return times


class _Threads:
    def __init__(self, n: int | None) -> None:
        self.n = n
        self.old = torch.get_num_threads()

    def __enter__(self) -> int:
        if self.n is not None:
            torch.set_num_threads(self.n)
        return torch.get_num_threads()

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


def _result(
    times: list[float], batches: Sequence[HFBatch], threads: int, notes: str, **extra: Any
) -> dict[str, Any]:
    med = statistics.median(times)
    tok = _tokens(batches)
    # 1-min load average after the run: on a shared box a value well above num_threads means
    # someone else was competing for the cores and the numbers are suspect.
    load1 = os.getloadavg()[0]
    return {
        "tokens_per_s": tok / med,
        "seconds": med,
        "notes": notes,
        "times": times,
        "tokens_per_pass": tok,
        "num_threads": threads,
        "load1": load1,
        **extra,
    }


def measure_train_step(
    model: nn.Module,
    batches: Sequence[HFBatch],
    warmup: int = 1,
    repeats: int = 3,
    num_threads: int | None = None,
    loss_fn: LossFn = summed_token_loss,
) -> dict[str, Any]:
    """Reference: plain forward + summed loss + ``backward()`` into all parameter grads, no
    optimizer.

    ``seconds`` is the median time of one pass over ``batches``.
    """
    with _Threads(num_threads) as threads:
        model.requires_grad_(True)

        def step(_i: int, b: HFBatch) -> None:
            model.zero_grad(set_to_none=True)
            loss_fn(model, b).backward()

        times = _time_passes(step, batches, warmup, repeats)
        model.zero_grad(set_to_none=True)
    return _result(
        times,
        batches,
        threads,
        "forward + summed-token CE + backward, all param grads, no optimizer",
    )


def measure_logix(
    model: nn.Module,
    batches: Sequence[HFBatch],
    rank: int,
    warmup: int = 1,
    repeats: int = 3,
    num_threads: int | None = None,
    save: bool = False,
    quiet: bool = True,
    loss_fn: LossFn = summed_token_loss,
) -> dict[str, Any]:
    """Tokens/s of LogIX logging rank x rank LoGra per-example gradients on every nn.Linear.

    ``model`` is not modified: a deep copy gets its ``Conv1D`` layers converted to ``nn.Linear``
    and LogIX's LoRA wrappers added (setup is excluded from timing). ``save=True`` additionally
    times LogIX's in-memory log buffering (``run.save(True)``); the on-disk flush happens only in
    ``finalize()``, timed separately (``finalize_s``), unless the buffer passes 1e9 elements.
    """
    import logix  # benchmark-only dependency
    import yaml
    from logix.utils import get_logger

    if quiet:
        get_logger().setLevel(logging.WARNING)

    with _Threads(num_threads) as threads, tempfile.TemporaryDirectory(prefix="logix_") as tmp:
        m = conv1d_to_linear(copy.deepcopy(model))
        cfg_path = os.path.join(tmp, "config.yaml")
        with open(cfg_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(
                {
                    "root_dir": os.path.join(tmp, "root"),
                    "lora": {"init": "random", "rank": int(rank)},
                },
                f,
            )
        # A LogIX instance rather than logix.init(): init() is a process-wide singleton.
        run = logix.LogIX(project="bench", config=cfg_path)
        run.watch(m)  # every leaf nn.Linear (incl. lm_head)
        run.add_lora()  # random A/C projections, zero B; re-watches only logix_lora_B
        run.setup({"grad": ["log"]})
        run.save(save)
        tracked = list(run.logger.modules_to_name.values())
        proj_dim = sum(mod.weight.numel() for mod in run.logger.modules_to_name)
        n_trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        ids = [[f"{i}:{j}" for j in range(b["input_ids"].shape[0])] for i, b in enumerate(batches)]
        last_log: dict[str, Any] = {}

        def step(i: int, b: HFBatch) -> None:
            with run(data_id=ids[i], mask=b["attention_mask"]):
                m.zero_grad(set_to_none=True)
                loss_fn(m, b).backward()
            last_log["log"] = run.get_log()[1]  # reference only, as a consumer would

        with warnings.catch_warnings():
            # LogIX's full backward hook on B fires with no input grads (A x needs none): harmless
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            times = _time_passes(step, batches, warmup, repeats)

        # sanity: one [batch, r_in, r_out] projected gradient per tracked module
        log = last_log["log"]
        bsz = batches[-1]["input_ids"].shape[0]
        assert set(log) == set(tracked), (sorted(log), tracked)
        assert sum(v["grad"][0].numel() for v in log.values()) == proj_dim
        assert all(v["grad"].shape[0] == bsz for v in log.values())

        finalize_s = None
        if save:
            t0 = time.perf_counter()
            run.finalize()
            finalize_s = time.perf_counter() - t0
        written = sorted(
            os.path.relpath(os.path.join(d, f), tmp) for d, _, fs in os.walk(tmp) for f in fs
        )

    notes = (
        f"LogIX 0.1.1 LoGra rank {rank}x{rank} on {len(tracked)} nn.Linear "
        f"(proj dim {proj_dim}); save={'on' if save else 'off'} "
        f"({'buffered in RAM, flushed at finalize' if save else 'no disk writes in loop'})"
    )
    return _result(
        times,
        batches,
        threads,
        notes,
        tracked_modules=tracked,
        proj_dim=proj_dim,
        trainable_params=n_trainable,
        finalize_s=finalize_s,
        files_written=written,
    )


# --------------------------------------------------------------------------------------------
# Self-check + small experiment:  .venv/bin/python benchmarks/peers/logix_runner.py [--quick]
# --------------------------------------------------------------------------------------------


def make_batches(vocab: int, n_batches: int, bsz: int, seq: int, seed: int = 0) -> list[HFBatch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(0, vocab, (bsz, seq), generator=g)
        out.append(
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        )
    return out


def check_logix_matches_autograd(rank: int = 8) -> float:
    """LogIX's per-example log equals d(loss_i)/dB for each example (float64, tiny GPT-2)."""
    import logix
    from logix.utils import get_logger
    from transformers import GPT2Config, GPT2LMHeadModel

    get_logger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_embd=32,
        n_layer=1,
        n_head=2,
        vocab_size=64,
        n_positions=16,
        bos_token_id=63,
        eos_token_id=63,
    )
    m = conv1d_to_linear(GPT2LMHeadModel(cfg).double().eval())
    b = make_batches(64, 1, 3, 16)[0]
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = os.path.join(tmp, "c.yaml")
        with open(cfg_path, "w", encoding="utf-8") as f:
            f.write(f"root_dir: {tmp}/root\nlora:\n  rank: {rank}\n")
        run = logix.LogIX(project="check", config=cfg_path)
        run.watch(m)
        run.add_lora()
        m.double()  # LoraLinear builds A/B/C in the default dtype, not the wrapped layer's
        run.setup({"grad": ["log"]})
        with run(data_id=["a", "b", "c"]):
            m.zero_grad(set_to_none=True)
            summed_token_loss(m, b).backward()
        log = copy.deepcopy(run.get_log()[1])
        run.logger.clear(hook=True, module=False, buffer=False)
        err = 0.0
        for i in range(3):
            m.zero_grad(set_to_none=True)
            summed_token_loss(m, {k: v[i : i + 1] for k, v in b.items()}).backward()
            for name, mod in m.named_modules():
                if name.endswith("logix_lora_B"):
                    g = mod.weight.grad  # [r_out, r_in], same layout as LogIX's "i j" = (out, in)
                    assert g is not None and g.abs().max() > 0, name
                    err = max(err, (log[name]["grad"][i] - g).abs().max().item())
    assert err < 1e-10, err
    return err


def _main() -> None:
    import argparse

    from transformers import GPT2Config, GPT2LMHeadModel

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="tiny model only")
    args = ap.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)

    err = check_logix_matches_autograd()
    print(f"check: LogIX per-example log == autograd dL_i/dB (max abs err {err:.1e}, float64)")

    setups = [
        (
            "tiny",
            GPT2Config(
                n_embd=128,
                n_layer=2,
                n_head=4,
                vocab_size=1024,
                n_positions=128,
                bos_token_id=1023,
                eos_token_id=1023,
            ),
            8,
            128,
            4,
            2,
            7,
        ),
        ("gpt2-small", GPT2Config(), 4, 128, 2, 1, 3),
    ]
    if args.quick:
        setups = setups[:1]
    rows = []
    for name, cfg, bsz, seq, nb, warm, reps in setups:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(cfg).eval()  # random init, dropout off
        batches = make_batches(cfg.vocab_size, nb, bsz, seq)
        nparam = sum(p.numel() for p in model.parameters())
        r = measure_train_step(model, batches, warm, reps, args.threads)
        rows.append((name, nparam, "train step", r))
        for rank in (16, 64):
            r = measure_logix(model, batches, rank, warm, reps, args.threads)
            rows.append((name, nparam, f"LogIX r={rank}", r))
        if name == "tiny":
            r = measure_logix(model, batches, 64, warm, reps, args.threads, save=True)
            rows.append((name, nparam, "LogIX r=64 save", r))
        for row in rows[-4 if name == "tiny" else -3 :]:
            _print_row(*row)
    print()
    print(
        f"{'model':<11} {'params':>7} {'method':<16} {'tok/s':>9} {'s/pass':>7} {'thr':>3}  "
        f"{'vs train':>8}  load  times"
    )
    base: dict[str, float] = {}
    for name, nparam, method, r in rows:
        if method == "train step":
            base[name] = r["tokens_per_s"]
        _print_row(name, nparam, method, r, base.get(name))


def _print_row(
    name: str, nparam: int, method: str, r: dict[str, Any], base: float | None = None
) -> None:
    rel = f"{r['tokens_per_s'] / base:8.2f}x" if base else " " * 9
    extra = f" proj_dim={r['proj_dim']}" if "proj_dim" in r else ""
    if r.get("finalize_s") is not None:
        extra += f" finalize={r['finalize_s']:.3f}s files={len(r['files_written'])}"
    print(
        f"{name:<11} {nparam / 1e6:6.1f}M {method:<16} {r['tokens_per_s']:9.0f} "
        f"{r['seconds']:7.3f} {r['num_threads']:>3} {rel} load={r['load1']:.1f} "
        f"{[round(t, 3) for t in r['times']]}{extra}",
        flush=True,
    )


if __name__ == "__main__":
    _main()
