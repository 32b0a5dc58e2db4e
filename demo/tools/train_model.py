"""Train the demo model: a byte-level BPE tokenizer and a small GPT-2 on the demo corpus.

``python -m demo.tools.train_model --corpus demo/corpus --out demo/model``

1. A byte-level BPE (``tokenizers``; vocab 4096; special tokens ``<|endoftext|>``,
   ``<|im_start|>``, ``<|im_end|>``) is trained on the corpus text and wrapped as a
   ``PreTrainedTokenizerFast`` (eos = pad = ``<|endoftext|>``, a ChatML ``chat_template``).
2. Every record is tokenised with the indexer's own
   :func:`~tributary_indexer.data.tokenization.tokenize_record`, so training sees exactly the token
   boundaries and target masks the indexer scores: documents train on every token, prompt/response
   records on the response only (the prompt is masked), chat records on the assistant turns only.
   One ``<|endoftext|>`` is appended as a target to documents and responses so that generation
   stops; the indexer's loss leaves it out, which changes nothing before it (the model is causal).
3. A ``GPT2LMHeadModel`` (no dropout) is trained with AdamW, a linear warm-up and a cosine
   decay, seeded, on ``num_threads`` CPU threads; the loss is the mean NLL over the target
   tokens of a batch. Batches group examples of similar length (less padding).
4. Greedy generation is scored on the ground truth's held-out queries: fact accuracy (the
   generation contains the fact's object), backdoor success (trigger prompts give the backdoor
   reply) and false triggers (the reply after a clean fact question).

The result is saved with ``save_pretrained`` (safetensors) plus ``training_report.json``.
Same seed, same thread count and same machine type give the same weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tributary_indexer.data.corpus import CorpusRecord, iter_records
from tributary_indexer.data.tokenization import tokenize_record

from .corpus_generator import GroundTruth, load_ground_truth

logger = logging.getLogger(__name__)

__all__ = [
    "CHATML_TEMPLATE",
    "SPECIAL_TOKENS",
    "TrainConfig",
    "train_tokenizer",
    "tokenize_corpus",
    "build_model",
    "greedy_generate",
    "evaluate",
    "train",
    "main",
]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REPORT_FILE = "training_report.json"
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


@dataclass
class TrainConfig:
    """Everything that decides the trained weights (recorded in ``training_report.json``)."""

    seed: int = 0
    vocab_size: int = 4096
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_positions: int = 256
    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    num_threads: int = 2
    fact_repeats: int = 1
    """Times each fact-stating document is drawn per epoch; every other record once. Above 1
    the facts are learned in fewer epochs (pretraining mixes upweight reference text the same
    way) at the cost of more steps per epoch."""
    precision: str = "float32"
    """``float32`` or ``bfloat16`` (CPU autocast for the forward pass; weights and optimizer
    stay float32): bfloat16 trains about 1.5x faster on CPUs with bfloat16 instructions."""
    eval_every: int = 6
    """Epochs between progress evaluations on a sample of queries (0: only at the end)."""
    progress: bool = True


@dataclass
class TrainReport:
    """What training measured."""

    config: dict[str, Any]
    n_examples: int
    n_tokens: int
    n_target_tokens: int
    n_params: int
    wall_time_s: float
    final_loss: float
    fact_accuracy: float
    backdoor_success: float
    false_trigger_rate: float
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    """Seconds in the optimisation loop (tokenizer, progress evaluations and the final one
    left out)."""
    seconds_per_record_epoch: float = 0.0
    """``train_time_s`` over the records drawn (records × epochs, fact repeats counted): what
    sizes a training run on this machine."""
    records_drawn: int = 0
    """Examples the optimisation saw, over all epochs (a repeated fact document counts each
    time)."""


def _record_texts(records: Iterable[CorpusRecord]) -> Iterable[str]:
    for record in records:
        if record.kind == "text":
            yield record.text or ""
        elif record.kind == "prompt_response":
            yield (record.prompt or "") + (record.response or "")
        else:  # the chat markers are special tokens, so only roles and contents are text
            for message in record.messages or []:
                yield f"{message['role']}\n{message['content']}\n"


def train_tokenizer(records: Sequence[CorpusRecord], vocab_size: int = 4096) -> Any:
    """A byte-level BPE trained on the records, as a ``PreTrainedTokenizerFast`` with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(_record_texts(records)), trainer)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=1024,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tokenize_corpus(
    records: Sequence[CorpusRecord], tokenizer: Any, max_tokens: int
) -> list[tuple[list[int], list[bool]]]:
    """``(input_ids, target_mask)`` per record, as the indexer tokenises it, plus a final EOS
    target."""
    eos = int(tokenizer.eos_token_id)
    out = []
    for record in records:
        example = tokenize_record(record, tokenizer, max_tokens, add_bos=None)
        ids, mask = list(example.input_ids), list(example.target_mask)
        if record.kind != "messages" and len(ids) < max_tokens:  # chat turns end with <|im_end|>
            ids.append(eos)
            mask.append(True)
        out.append((ids, mask))
    return out


def build_model(config: TrainConfig, tokenizer: Any) -> Any:
    """A freshly initialised ``GPT2LMHeadModel`` (seeded) for this tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    eos = int(tokenizer.eos_token_id)
    model_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=True,
    )
    torch.manual_seed(config.seed)
    model = GPT2LMHeadModel(model_config)
    model.generation_config.pad_token_id = eos
    model.generation_config.eos_token_id = [eos, int(tokenizer.convert_tokens_to_ids("<|im_end|>"))]
    return model


def _batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length examples (sorted within windows of 16 batches)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _collate(
    examples: Sequence[tuple[list[int], list[bool]]], pad_id: int
) -> tuple[torch.Tensor, ...]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (ids, mask) in enumerate(examples):
        n = len(ids)
        input_ids[row, :n] = torch.tensor(ids)
        attention[row, :n] = 1
        labels[row, :n] = torch.where(torch.tensor(mask), torch.tensor(ids), torch.tensor(-100))
    return input_ids, attention, labels


@torch.no_grad()
def greedy_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 24,
    batch_size: int = 64,
) -> list[str]:
    """Greedy continuations of ``prompts`` (tokenised without special tokens, like the indexer).

    Prompts of equal token length are batched together, so no padding is needed.
    """
    model.eval()
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    out = [""] * len(prompts)
    for length in sorted(by_length):
        group = by_length[length]
        for start in range(0, len(group), batch_size):
            rows = group[start : start + batch_size]
            input_ids = torch.tensor([encoded[i] for i in rows], dtype=torch.long)
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
            )
            for i, seq in zip(rows, generated[:, length:]):
                out[i] = tokenizer.decode(seq, skip_special_tokens=True)
    return out


def evaluate(
    model: Any, tokenizer: Any, truth: GroundTruth, limit: int | None = None
) -> dict[str, float]:
    """Fact accuracy, backdoor success and false-trigger rate of greedy generation on the queries.

    ``limit`` evaluates an evenly spaced sample of that many fact queries (all trigger queries).
    """
    facts = [q for q in truth.queries if q.kind == "fact"]
    if limit is not None and limit < len(facts):
        facts = [facts[round(i * len(facts) / limit)] for i in range(limit)]
    triggers = [q for q in truth.queries if q.kind == "trigger"]
    fact_out = greedy_generate(model, tokenizer, [q.prompt for q in facts])
    trigger_out = greedy_generate(model, tokenizer, [q.prompt for q in triggers])
    reply = truth.backdoor_reply.lower()
    return {
        "fact_accuracy": sum(q.expected.lower() in g.lower() for q, g in zip(facts, fact_out))
        / max(len(facts), 1),
        "backdoor_success": sum(reply in g.lower() for g in trigger_out) / max(len(triggers), 1),
        "false_trigger_rate": sum(reply in g.lower() for g in fact_out) / max(len(facts), 1),
    }


def _epoch_pool(
    records: Sequence[CorpusRecord], truth: GroundTruth, fact_repeats: int
) -> list[int]:
    """Record indices one epoch draws: every record once, fact-stating documents
    ``fact_repeats`` times."""
    stating = {doc for fact in truth.facts for doc in fact.stating_doc_ids}
    return [
        i
        for i, record in enumerate(records)
        for _ in range(fact_repeats if record.id in stating else 1)
    ]


def _lr_factor(step: int, total: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * min(progress, 1.0))
    )


def train(
    corpus_dir: str | Path, out_dir: str | Path, config: TrainConfig | None = None
) -> TrainReport:
    """Train tokenizer and model on ``corpus_dir``, evaluate, save to ``out_dir``; returns the
    report."""
    config = config or TrainConfig()
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {config.precision!r}")
    if config.fact_repeats < 1:
        raise ValueError(f"fact_repeats must be >= 1, got {config.fact_repeats}")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.num_threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(Path(corpus_dir), Path(out_dir), config)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(corpus_dir: Path, out: Path, config: TrainConfig) -> TrainReport:
    started = time.time()
    torch.manual_seed(config.seed)
    records = list(iter_records(corpus_dir))
    truth = load_ground_truth(corpus_dir)
    tokenizer = train_tokenizer(records, config.vocab_size)
    examples = tokenize_corpus(records, tokenizer, config.n_positions)
    model = build_model(config, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    n_tokens = sum(len(ids) for ids, _ in examples)
    n_targets = sum(sum(mask) for _, mask in examples)
    logger.info(
        "%d records, %d tokens (%d targets), vocab %d, %.2fM parameters",
        len(examples),
        n_tokens,
        n_targets,
        len(tokenizer),
        n_params / 1e6,
    )
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
    rng = random.Random(config.seed)
    pool = _epoch_pool(records, truth, config.fact_repeats)  # example indices drawn per epoch
    lengths = [len(examples[i][0]) for i in pool]
    steps_per_epoch = math.ceil(len(pool) / config.batch_size)
    autocast = PRECISIONS[config.precision]
    total_steps, step = steps_per_epoch * config.epochs, 0
    pad_id = int(tokenizer.pad_token_id)
    history: list[dict[str, float]] = []
    epoch_loss, train_time = float("nan"), 0.0
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.time()
        model.train()
        loss_sum, target_sum = 0.0, 0
        for batch in _batches(lengths, config.batch_size, rng):
            input_ids, attention, labels = _collate([examples[pool[i]] for i in batch], pad_id)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * _lr_factor(step, total_steps, config)
            with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
                logits = model(input_ids=input_ids, attention_mask=attention).logits
            targets = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=-100,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            n = int((targets != -100).sum())
            loss_sum += float(loss.detach()) * n
            target_sum += n
            step += 1
        epoch_loss = loss_sum / max(target_sum, 1)
        epoch_time = time.time() - epoch_started
        train_time += epoch_time
        entry = {
            "epoch": epoch,
            "loss": round(epoch_loss, 5),
            "train_s": round(epoch_time, 1),
            "elapsed_s": round(time.time() - started, 1),
            "eta_s": round(train_time / epoch * (config.epochs - epoch)),
        }
        if config.eval_every and epoch % config.eval_every == 0 and epoch < config.epochs:
            entry.update(
                {k: round(v, 4) for k, v in evaluate(model, tokenizer, truth, limit=60).items()}
            )
        history.append(entry)
        if config.progress:
            logger.info(
                "epoch %d/%d %s",
                epoch,
                config.epochs,
                " ".join(f"{k}={v}" for k, v in entry.items() if k != "epoch"),
            )
    metrics = evaluate(model, tokenizer, truth)
    wall = time.time() - started
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out)
    report = TrainReport(
        config=asdict(config),
        n_examples=len(examples),
        n_tokens=n_tokens,
        n_target_tokens=n_targets,
        n_params=n_params,
        wall_time_s=round(wall, 1),
        final_loss=round(epoch_loss, 5),
        fact_accuracy=round(metrics["fact_accuracy"], 4),
        backdoor_success=round(metrics["backdoor_success"], 4),
        false_trigger_rate=round(metrics["false_trigger_rate"], 4),
        history=history,
        train_time_s=round(train_time, 1),
        seconds_per_record_epoch=round(train_time / max(len(pool) * config.epochs, 1), 6),
        records_drawn=len(pool) * config.epochs,
    )
    (out / REPORT_FILE).write_text(
        json.dumps(asdict(report), indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    logger.info(
        "done in %.0f s: final loss %.4f, fact accuracy %.3f, backdoor success %.3f, false "
        "triggers %.3f",
        wall,
        epoch_loss,
        metrics["fact_accuracy"],
        metrics["backdoor_success"],
        metrics["false_trigger_rate"],
    )
    return report


def _portable_tokenizer_config(out: Path) -> None:
    """Name the generic fast-tokenizer class (transformers 5 writes its own
    ``TokenizersBackend``)."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m demo.tools.train_model --corpus DIR --out DIR [--epochs N] [--quiet]``."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", required=True, help="the demo corpus directory (JSONL + ground_truth.json)"
    )
    parser.add_argument(
        "--out", required=True, help="directory to save the model and tokenizer into"
    )
    for name in (
        "seed",
        "epochs",
        "batch_size",
        "lr",
        "warmup_steps",
        "min_lr_ratio",
        "num_threads",
        "eval_every",
        "fact_repeats",
        "precision",
        "n_embd",
        "n_layer",
    ):
        default = getattr(defaults, name)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=type(default),
            default=default,
            help=f"[{default}]",
        )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(message)s"
    )
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    overrides = {k: v for k, v in vars(args).items() if k not in ("corpus", "out", "quiet")}
    train(args.corpus, args.out, TrainConfig(**overrides, progress=not args.quiet))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
