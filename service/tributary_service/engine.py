"""The attribution query pipeline over a loaded index and model (no HTTP here).

For a micro-batch of requests: tokenise (chat template for ``messages``) → one padded
forward/backward through the index's hooks and projector (keeping the response positions' terms
when the ranking needs them) → the ranking's query vectors
(:meth:`~tributary_indexer.query.ranking.Ranking.queries`) → one batched search over all shards
for the unfiltered requests, one search each for the filtered → the ranking's re-score of the
candidates → example records → optionally token-wise scores
(:mod:`tributary_indexer.query.token_wise`). Each stage's time is reported in ``timings``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tributary_client import types
from tributary_indexer.data.batching import collate, pad_token_id
from tributary_indexer.data.tokenization import QueryTokens, tokenize_messages_query, tokenize_query
from tributary_indexer.errors import ExampleError
from tributary_indexer.gradients.computer import GradientComputer
from tributary_indexer.model_loading import capped_max_tokens
from tributary_indexer.query import search
from tributary_indexer.query.index import AttributionIndex
from tributary_indexer.query.ranking import RankingQuery
from tributary_indexer.query.search import Direction, Hit
from tributary_indexer.query.token_wise import response_token_scores, training_token_scores

from .evidence import evidence_block, prompt_text, verbatim_evidence
from .example_views import ExampleViews, corpus_roots

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the engine cannot serve as sent (a 400): message, offending field, code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass
class PreparedQuery:
    """A validated, tokenised request waiting for its gradient."""

    request: types.AttributionRequest
    tokens: QueryTokens
    timings: dict[str, float] = field(default_factory=dict)
    received: float = field(default_factory=time.perf_counter)

    @property
    def n_tokens(self) -> int:
        return self.tokens.example.n_tokens

    @property
    def filtered(self) -> bool:
        """The request restricts its examples by source or provider."""
        f = self.request.filters
        return f is not None and (f.source is not None or f.provider is not None)

    @property
    def directions(self) -> list[Direction]:
        direction = self.request.direction
        return ["helpful", "harmful"] if direction == "both" else [direction]  # type: ignore[list-item]


@dataclass
class QueryWork:
    """One request of a micro-batch on its way to an answer."""

    prepared: PreparedQuery
    gradient: torch.Tensor
    """``[D_proj]``: the query's projected gradient."""
    query: RankingQuery
    search_vector: np.ndarray
    """``[D]`` float32: what the index is searched with."""
    timings: dict[str, float]
    hits: list[Hit] | None = None
    """The search's hits once found (the shared search fills those of unfiltered requests)."""


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


class AttributionEngine:
    """Answers attribution requests against one loaded index and model."""

    def __init__(
        self,
        index: AttributionIndex,
        model: torch.nn.Module,
        tokenizer: Any,
        computer: GradientComputer,
        max_tokens: int,
        snippet_chars: int = 400,
    ):
        self.index = index
        self.model = model
        self.tokenizer = tokenizer
        self.computer = computer
        self.max_tokens = capped_max_tokens(max_tokens, model, "TRIBUTARY_MAX_REQUEST_TOKENS")
        """Tokens per request: ``max_tokens``, or the model's context length if smaller."""
        self._limit_reason = (
            "" if self.max_tokens == max_tokens else " (the model's context length)"
        )
        self.snippet_chars = snippet_chars
        self.pad_id = pad_token_id(tokenizer)
        fingerprint = index.manifest.projector.params.get("fingerprint", "")
        self.index_id = fingerprint[:12] + "-" + str(index.n_examples)
        self.views = ExampleViews(corpus_roots(index.manifest.build_config))
        self._composition: tuple[int, list[types.CompositionRow]] | None = None

    @property
    def composition(self) -> list[types.CompositionRow]:
        """Examples and tokens per provider and source, not counting removed examples (cached
        per removal)."""
        removed = self.index.removed()
        if self._composition is None or self._composition[0] != removed.generation:
            rows = [
                types.CompositionRow(group_by=g, key=k, examples=n, tokens=t)  # type: ignore[arg-type]
                for g, k, n, t in self.index.store.composition(exclude=removed.ids)
            ]
            self._composition = (removed.generation, rows)
        return self._composition[1]

    # ------------------------------------------------------------------ stage 1: tokenise
    def prepare(self, request: types.AttributionRequest) -> PreparedQuery:
        """Tokenise and validate; raises :class:`RequestError` with what to fix."""
        t0 = time.perf_counter()
        field_name = "messages" if request.messages is not None else "response"
        try:
            if request.messages is not None:
                messages = [m.model_dump() for m in request.messages]
                tokens = tokenize_messages_query(messages, self.tokenizer, self.max_tokens)
            else:
                assert request.prompt is not None and request.response is not None
                tokens = tokenize_query(
                    request.prompt, request.response, self.tokenizer, self.max_tokens
                )
        except ExampleError as exc:
            raise RequestError(str(exc), param=field_name, code=exc.code) from exc
        except Exception as exc:  # tokenizer-level failures (e.g. no chat template)
            raise RequestError(
                f"cannot tokenise the request: {exc}", param="messages", code="tokenization_failed"
            ) from exc
        example = tokens.example
        if example.n_truncated_tokens:
            raise RequestError(
                f"the request has {example.n_tokens + example.n_truncated_tokens} tokens, more "
                f"than this server's limit of {self.max_tokens}{self._limit_reason}; fix: shorten "
                "the prompt or response",
                param="response",
                code="too_many_tokens",
            )
        return PreparedQuery(request, tokens, {"tokenize_ms": _ms(t0)})

    # ------------------------------------------------------------------ stages 2-5
    def attribute(self, queries: Sequence[PreparedQuery]) -> list[types.AttributionResponse]:
        """Answer several prepared queries with one forward/backward and one batched search."""
        if not queries:
            return []
        ranking = self.index.ranking
        t0 = time.perf_counter()
        batch = collate([q.tokens.example for q in queries], self.pad_id)
        emitting = batch.emitting_mask if ranking.positions else None  # [B, T]: response positions
        grads = self.computer.compute(batch, positions=emitting)
        gradient_ms = _ms(t0)
        t0 = time.perf_counter()
        terms = grads.position_terms
        owner = None  # [n]: each term's query (row-major order)
        if emitting is not None and terms is not None:
            owner = emitting.nonzero()[:, 0].to(terms.device)
        reference = self.index.reference(terms.device if terms is not None else "cpu")
        ranked = ranking.queries(
            self.index.space,
            grads.vectors,
            terms,
            owner,
            [q.tokens.example for q in queries],
            reference,
        )
        precondition_ms = _ms(t0)
        work = [
            QueryWork(
                q,
                grads.vectors[row],
                rq,
                rq.search.float().cpu().numpy(),
                dict(q.timings, gradient_ms=gradient_ms, precondition_ms=precondition_ms),
            )
            for row, (q, rq) in enumerate(zip(queries, ranked))
        ]
        self._shared_search(work)
        return [self._answer(w) for w in work]

    def _shared_search(self, work: Sequence[QueryWork]) -> None:
        """Search every unfiltered request (both signs as needed) in one batched scan."""
        shared = [w for w in work if not w.prepared.filtered]
        if not shared:
            return
        t0 = time.perf_counter()
        found = search.search(
            self.index,
            np.stack([w.search_vector for w in shared]),
            [w.prepared.directions for w in shared],
            [self.index.ranking.fetch(w.prepared.request.top_k) for w in shared],
        )
        elapsed = _ms(t0)
        for w, hits in zip(shared, found):
            w.hits = hits
            w.timings["search_ms"] = elapsed

    def _filtered_search(self, w: QueryWork) -> list[Hit]:
        """A source/provider-filtered request: its own search over the examples it allows."""
        filters = w.prepared.request.filters
        assert filters is not None
        allowed = self.index.store.ids_matching(source=filters.source, provider=filters.provider)
        fetch = self.index.ranking.fetch(w.prepared.request.top_k)
        hits: list[Hit] = []
        for direction in w.prepared.directions:
            hits += search.search(
                self.index, w.search_vector[None], [[direction]], [fetch], allowed_ids=allowed
            )[0]
        return hits

    def _answer(self, w: QueryWork) -> types.AttributionResponse:
        request, timings = w.prepared.request, w.timings
        if w.hits is None:
            t0 = time.perf_counter()
            w.hits = self._filtered_search(w)
            timings["search_ms"] = _ms(t0)
        t0 = time.perf_counter()
        hits = search.rerank(self.index, self.index.ranking, w.query, w.hits, request.top_k)
        timings["rerank_ms"] = _ms(t0)
        t0 = time.perf_counter()
        records = self.index.store.get_many([h.example_id for h in hits])
        removed = self.index.removed()  # the search dropped them; a removal since is honoured too
        hits = [h for h in hits if h.example_id in records and h.example_id not in removed]
        timings["fetch_ms"] = _ms(t0)
        t0 = time.perf_counter()
        response_scores: list[types.TokenScore] | None = None
        per_example_response: np.ndarray | None = None
        training_tokens: list[list[types.TokenScore]] = []
        influence = w.query.influence.float().cpu().numpy()  # [D] float32, as stored vectors are
        if request.token_wise and hits:
            ids = np.array([h.example_id for h in hits], dtype=np.int64)
            shares, per_example_response = response_token_scores(
                self.index.space,
                self.computer,
                w.prepared.tokens,
                w.gradient,
                self.index.stored_vectors(ids),
                self.pad_id,
            )
            response_scores = [types.TokenScore(**s._asdict()) for s in shares]
            training = training_token_scores(
                self.index.space,
                self.computer,
                self.tokenizer,
                [records[i] for i in ids.tolist()],
                influence,
                self.pad_id,
                self.max_tokens,
            )
            training_tokens = [
                [types.TokenScore(**s._asdict()) for s in example] for example in training
            ]
        timings["token_wise_ms"] = _ms(t0)
        t0 = time.perf_counter()
        verbatim: list[types.VerbatimEvidence | None] = [None] * len(hits)
        want_spans = request.verbatim is not False
        if want_spans or request.evidence:
            prompt = prompt_text(request)
            response_text = w.prepared.tokens.response_text
            verbatim = [
                verbatim_evidence(records[h.example_id].text, response_text, prompt) for h in hits
            ]
        blocks: list[types.Evidence | None] = [None] * len(hits)
        if request.evidence and hits:
            ids = np.array([h.example_id for h in hits], dtype=np.int64)
            stored = self.index.stored_vectors(ids).astype(np.float64)
            linear = stored @ influence.astype(np.float64)  # [n]
            blocks = [
                evidence_block(
                    float(linear[n]),
                    v,
                    per_example_response[n] if per_example_response is not None else None,
                )
                for n, v in enumerate(verbatim)
                if v is not None
            ]
        timings["verbatim_ms"] = _ms(t0)
        examples = []
        for n, hit in enumerate(hits):
            rec = records[hit.example_id]
            examples.append(
                types.AttributedExample(
                    example_id=hit.example_id,
                    score=hit.score,
                    direction=hit.direction,
                    text=rec.text[: self.snippet_chars],
                    source=rec.source,
                    provider=rec.provider,
                    **self.views.provenance(rec),
                    token_scores=(
                        [t for t in training_tokens[n] if t.end <= self.snippet_chars]
                        if training_tokens
                        else None
                    ),
                    response_token_scores=(
                        per_example_response[n].tolist()
                        if per_example_response is not None
                        else None
                    ),
                    verbatim=verbatim[n] if want_spans else None,
                    evidence=blocks[n],
                )
            )
        timings["total_ms"] = _ms(w.prepared.received)
        return types.AttributionResponse(
            id=_attribution_id(self.index_id, request),
            index_id=self.index_id,
            score_variant=self.index.manifest.score_variant,
            examples=examples,
            response_token_scores=response_scores,
            timings=types.StageTimings(**timings),
        )


def _attribution_id(index_id: str, request: types.AttributionRequest) -> str:
    """Content-addressed: the same request to the same index gets the same id (and answer)."""
    digest = hashlib.sha256((index_id + "\n" + request.model_dump_json()).encode()).hexdigest()
    return f"attr_{digest[:24]}"
