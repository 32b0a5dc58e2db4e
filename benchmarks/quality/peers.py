"""The peers a user would otherwise pick, run on the same model, data and queries.

* **Kronfluence** (EK-FAC influence, Grosse et al. 2023): its documented language-modelling task
  (summed target NLL for training loss and measurement; true Fisher with sampled labels), with
  its default and its heuristic damping.
* **LogIX** (LoGra, the LoGra authors' library): rank-16 random LoGra on every ``nn.Linear``,
  its raw projected-gradient covariance as the Hessian, ``dot`` (influence) and ``cosine``.

Both only see ``nn.Linear``, so they get a copy of the GPT-2 with its ``Conv1D`` layers swapped
for equivalent ``nn.Linear`` ones (``benchmarks/peers/linear_gpt2.py``). Benchmark-only
dependencies (``make bench-peers``); a peer that cannot be imported raises
:class:`PeerUnavailable` with the reason, and the benchmark reports it.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tributary_indexer.data.batching import TokenizedExample, collate
from tributary_indexer.gradients.objectives import per_example_target_loss

from benchmarks.peers.linear_gpt2 import conv1d_to_linear

from .workload import Workload

logger = logging.getLogger(__name__)


class PeerUnavailable(RuntimeError):
    """A peer library is not installed or cannot run here (the message says why)."""


def _padded(examples: list[TokenizedExample], pad_id: int) -> list[dict[str, torch.Tensor]]:
    """One dict per example, all padded to the same width (default collation stacks them)."""
    batch = collate(examples, pad_id)
    labels = torch.where(batch.target_mask, batch.input_ids, torch.full_like(batch.input_ids, -100))
    return [
        {
            "input_ids": batch.input_ids[i],
            "attention_mask": batch.attention_mask[i],
            "labels": labels[i],
        }
        for i in range(len(examples))
    ]


def _summed_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return per_example_target_loss(logits, batch["input_ids"], batch["labels"] != -100).sum()


def kronfluence_scores(
    model: torch.nn.Module,
    workload: Workload,
    damping: float | None,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """``[Q, N]`` EK-FAC influence scores from Kronfluence (positive = helpful, as ours).

    ``timings``, when given, receives the seconds of its two phases: ``factors`` (covariances,
    eigendecomposition, eigenvalue correction: two passes over the training set) and ``scores``
    (one pass over the training set per query batch of 16).
    """
    try:
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments
        from kronfluence.task import Task
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise PeerUnavailable(
            f"kronfluence is not installed ({err}); run `make bench-peers`"
        ) from err

    class LanguageModelingTask(Task):
        def compute_train_loss(self, batch, model, sample=False):  # noqa: ANN001, ANN201 - Kronfluence's signature
            if not sample:
                return _summed_nll(model, batch)
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            with torch.no_grad():
                sampled = torch.distributions.Categorical(logits=logits.detach()).sample()  # [B, T]
            shifted = torch.cat(
                [batch["input_ids"][:, :1], sampled[:, :-1]], dim=1
            )  # token t+1 := sample at t
            return per_example_target_loss(logits, shifted, batch["labels"] != -100).sum()

        def compute_measurement(self, batch, model):  # noqa: ANN001, ANN201
            return _summed_nll(model, batch)

        def get_attention_mask(self, batch):  # noqa: ANN001, ANN201
            return batch["attention_mask"]

    linear = conv1d_to_linear(copy.deepcopy(model)).eval()
    task = LanguageModelingTask()
    linear = prepare_model(linear, task)
    train = _padded(workload.examples, workload.pad_id)
    queries = _padded([q.example for q in workload.queries], workload.pad_id)
    with tempfile.TemporaryDirectory(prefix="kronfluence_") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analyzer = Analyzer("quality", linear, task, cpu=True, disable_tqdm=True, output_dir=tmp)
        t0 = time.perf_counter()
        analyzer.fit_all_factors(
            "ekfac",
            train,
            per_device_batch_size=32,
            factor_args=FactorArguments(strategy="ekfac"),
            overwrite_output_dir=True,
        )
        t1 = time.perf_counter()
        analyzer.compute_pairwise_scores(
            "scores",
            "ekfac",
            queries,
            train,
            per_device_query_batch_size=16,
            per_device_train_batch_size=32,
            score_args=ScoreArguments(damping_factor=damping),
            overwrite_output_dir=True,
        )
        scores = analyzer.load_pairwise_scores("scores")["all_modules"]  # [Q, N]
        if timings is not None:
            timings.update(factors=t1 - t0, scores=time.perf_counter() - t1)
    return scores.double().numpy()


def logix_scores(
    model: torch.nn.Module, workload: Workload, mode: str, rank: int = 16
) -> np.ndarray:
    """``[Q, N]`` LogIX LoGra scores with its raw projected Hessian (``mode`` dot or cosine)."""
    try:
        import logix
        import yaml
        from logix.utils import get_logger
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise PeerUnavailable(f"logix-ai is not installed ({err}); run `make bench-peers`") from err

    get_logger().setLevel(logging.WARNING)
    linear = conv1d_to_linear(copy.deepcopy(model)).eval()
    with tempfile.TemporaryDirectory(prefix="logix_") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = Path(tmp) / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {"root_dir": str(Path(tmp) / "root"), "lora": {"init": "random", "rank": rank}}
            )
        )
        run = logix.LogIX(project="quality", config=str(config))
        run.watch(linear)
        run.add_lora()
        linear.to(torch.float64)  # LoRA layers are created in the default dtype
        run.setup({"grad": ["log", "covariance"]})
        run.save(True)
        examples = workload.examples
        for start in range(0, len(examples), 32):
            rows = list(range(start, min(start + 32, len(examples))))
            batch = collate([examples[i] for i in rows], workload.pad_id)
            b = {
                "input_ids": batch.input_ids,
                "attention_mask": batch.attention_mask,
                "labels": torch.where(
                    batch.target_mask, batch.input_ids, torch.full_like(batch.input_ids, -100)
                ),
            }
            with run(data_id=[str(i) for i in rows], mask=batch.attention_mask):
                linear.zero_grad(set_to_none=True)
                _summed_nll(linear, b).backward()
        run.finalize()
        loader = run.build_log_dataloader(batch_size=64)
        run.eval()
        run.setup({"grad": ["log"]})
        qbatch = collate([q.example for q in workload.queries], workload.pad_id)
        qb = {
            "input_ids": qbatch.input_ids,
            "attention_mask": qbatch.attention_mask,
            "labels": torch.where(
                qbatch.target_mask, qbatch.input_ids, torch.full_like(qbatch.input_ids, -100)
            ),
        }
        with run(
            data_id=[f"q{i}" for i in range(len(workload.queries))], mask=qbatch.attention_mask
        ):
            linear.zero_grad(set_to_none=True)
            _summed_nll(linear, qb).backward()
        query_log = run.get_log(copy=True)
        result = run.compute_influence_all(query_log, loader, mode=mode)
        influence = result["influence"].double().cpu().numpy()  # [Q, N] in the loader's order
        order = np.array([int(i) for i in result["tgt_ids"]])
    scores = np.zeros((len(workload.queries), len(examples)))
    scores[:, order] = influence
    return scores


def entries(
    model: torch.nn.Module, workload: Workload
) -> list[tuple[str, str, Callable[[], np.ndarray]]]:
    """``(name, "peer", compute)`` for each peer configuration."""
    m = model.double()
    return [
        (
            "Kronfluence EK-FAC (default damping 1e-8)",
            "peer",
            lambda: kronfluence_scores(m, workload, 1e-8),
        ),
        (
            "Kronfluence EK-FAC (damping 0.1·mean eig)",
            "peer",
            lambda: kronfluence_scores(m, workload, None),
        ),
        ("LogIX LoGra r16 random, dot", "peer", lambda: logix_scores(m, workload, "dot")),
        ("LogIX LoGra r16 random, cosine", "peer", lambda: logix_scores(m, workload, "cosine")),
    ]
