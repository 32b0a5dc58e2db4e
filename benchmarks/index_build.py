"""End-to-end index build throughput vs a plain training step, disk per example, peak RSS.

Builds a real index (CLI in a subprocess, so its peak RSS is measured alone) for a random-init
GPT-2 of the chosen size over a generated corpus, then times a plain forward+backward training
step on the same model, batch shape and threads for the reference. The target:
build tokens/s ≥ 0.9× the gradient-logging throughput of ``logging_throughput.py``.

    .venv/bin/python benchmarks/index_build.py --size gpt2-small --examples 20000
    .venv/bin/python benchmarks/index_build.py --size tiny --examples 20000     # minutes, not hours
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "indexer")]

from benchmarks.logging_throughput import SIZES  # noqa: E402

WORDS = (
    "lantern copper violin salt map honey glass tea wool clock ink fig river harbour market north "
    "south merchant weaver scribe archive bridge tower garden mill forge quarry orchard"
).split()


def write_corpus(path: Path, n: int, words: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(words))
            f.write(
                json.dumps(
                    {"id": f"doc-{i}", "text": f"Record {i}: {text}.", "provider": f"p{i % 5}"}
                )
                + "\n"
            )


def save_model(size: str, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    cfg_kwargs = SIZES[size][0]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    vocab = cfg_kwargs.get("vocab_size", 50257)
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab, 2000),
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(
        [" ".join(WORDS)] * 50 + [f"Record {i}:" for i in range(1000)], trainer
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**{**cfg_kwargs, "n_positions": 256}))
    model.save_pretrained(out)
    tok.save_pretrained(out)


def train_step_tokens_per_s(model_dir: Path, corpus: Path, batch: int, repeats: int = 3) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = [json.loads(line)["text"] for _, line in zip(range(batch * 2), open(corpus))]
    enc = tok(texts, return_tensors="pt", padding=True)
    times = []
    for i in range(repeats + 1):
        ids = enc.input_ids[(i % 2) * batch : (i % 2 + 1) * batch]
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        if i:
            times.append(time.perf_counter() - t0)
    return batch * enc.input_ids.shape[1] / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", default="gpt2-small", choices=sorted(SIZES))
    ap.add_argument("--examples", type=int, default=20000)
    ap.add_argument("--words", type=int, default=40, help="words per generated document (~tokens)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument(
        "--modules",
        default="all",
        help="module preset (the recorded runs track every linear module)",
    )
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tributary-index-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir, corpus, out = work / "model", work / "corpus.jsonl", work / "index"
    if not model_dir.exists():
        save_model(args.size, model_dir)
    write_corpus(corpus, args.examples, args.words)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "tributary_indexer.cli",
        "--log-level",
        "WARNING",
        "build",
        "--model",
        str(model_dir),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--rank-in",
        str(args.rank),
        "--rank-out",
        str(args.rank),
        "--modules",
        args.modules,
        "--batch-tokens",
        str(args.batch_tokens),
        "--num-threads",
        str(args.threads),
        "--no-progress",
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "indexer"), str(ROOT)]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    manifest = json.loads((out / "manifest.json").read_text())
    summary = manifest["build_config"]["summary"]
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    build_tps = summary["tokens"] / wall
    bsz = max(1, args.batch_tokens // (args.words + 8))
    train_tps = train_step_tokens_per_s(model_dir, corpus, bsz)
    print(
        f"# index build — {args.size}, {args.examples} examples, {platform.machine()} "
        f"{os.cpu_count()} cores, torch {torch.__version__} ({args.threads} threads)"
    )
    print("| metric | value |\n|---|---|")
    print(f"| examples / tokens | {summary['examples']} / {summary['tokens']} |")
    print(f"| wall time (whole CLI run, model load included) | {wall:.1f} s |")
    print(f"| build throughput | {build_tps:.0f} tokens/s |")
    print(f"| plain training step (same model, batch {bsz}) | {train_tps:.0f} tokens/s |")
    print(f"| build ÷ training step | {build_tps / train_tps:.2f}× |")
    print(f"| disk per example | {disk / summary['examples']:.0f} bytes (dim {manifest['dim']}) |")
    print(f"| peak RSS of the build | {peak_rss / 2**20:.0f} MiB |")


if __name__ == "__main__":
    main()
