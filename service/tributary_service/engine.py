"""The attribution query pipeline, as plain functions over loaded objects (no HTTP here).

For a batch of requests: tokenise (chat template for ``messages``) → one padded
forward/backward through the same hooks and projector as the index → the index's score
transform (preconditioning) → search over all shards (``harmful`` searches with ``−q``) →
example records → optionally token-wise decompositions.

With a saturated ranking (``span_gated``, the default for ``influence`` indexes,
``span_saturated`` or ``token_saturated``; :mod:`tributary_indexer.query.ranking`) the forward/backward also keeps the
per-position terms of the response positions; the search takes the standardised tokens' sum as
its query and returns ``token_candidates`` per direction, and those are re-scored exactly with the
saturated score (``rerank_ms``) before the top ``top_k`` are kept.

Token-wise scores: a score is linear in the query's projected gradient ``g = Σ_t g^{(t)}``
(DESIGN §2), so ``score = Σ_t ⟨stored(z), q^{(t)}⟩`` exactly. Position ``t``'s term is shown on
the token the model *emits* there (token ``t+1``); positions before the response (the prompt)
act only through attention and are not shown, so the response tokens' scores sum to the
influence minus that context part (under a saturated ranking an example's ``score`` is its
saturated score; the token-wise scores stay the linear influence shares). The same split is
done on the training side for the returned examples only (their gradients are recomputed in one
batch). Both use the dual form (the hooks score each position against fixed vectors), never
materialising ``[T, D]`` per-position vectors; only the saturated rankings materialise
the query's own, and only at the positions that emit response tokens (``[n_tokens, D_proj]``: the
hooks pick those positions, so a long prompt costs no per-position memory).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from tributary_client import types
from tributary_indexer.data.batching import TokenizedExample, collate, pad_token_id
from tributary_indexer.data.example_store import StoredExample
from tributary_indexer.data.tokenization import (
    QueryTokens,
    tokenize_messages_query,
    tokenize_query,
    tokenize_record,
)
from tributary_indexer.errors import ExampleError
from tributary_indexer.gradients.computer import GradientComputer
from tributary_indexer.model_loading import capped_max_tokens
from tributary_indexer.query.index import AttributionIndex
from tributary_indexer.query.ranking import TokenQuery

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


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


class AttributionEngine:
    """Answers attribution requests against one loaded index and model."""

    def __init__(self, index: AttributionIndex, model: torch.nn.Module, tokenizer: Any, computer: GradientComputer,
                 max_tokens: int, snippet_chars: int = 400, token_candidates: int = 200):
        self.index = index
        self.model = model
        self.tokenizer = tokenizer
        self.computer = computer
        self.max_tokens = capped_max_tokens(max_tokens, model, "TRIBUTARY_MAX_REQUEST_TOKENS")
        """Tokens per request: ``max_tokens``, or the model's context length when that is smaller."""
        self._limit_reason = "" if self.max_tokens == max_tokens else " (the model's context length)"
        self.snippet_chars = snippet_chars
        self.token_candidates = token_candidates
        self.pad_id = pad_token_id(tokenizer)
        self.index_id = index.manifest.projector.params.get("fingerprint", "")[:12] + "-" + str(index.n_examples)
        self.views = ExampleViews(corpus_roots(index.manifest.build_config))
        self._composition: tuple[int, list[types.CompositionRow]] | None = None

    @property
    def composition(self) -> list[types.CompositionRow]:
        """Examples and tokens per provider and source, not counting removed examples (cached per removal)."""
        removed = self.index.removed()
        if self._composition is None or self._composition[0] != removed.generation:
            rows = [types.CompositionRow(group_by=g, key=k, examples=n, tokens=t)  # type: ignore[arg-type]
                    for g, k, n, t in self.index.store.composition(exclude=removed.ids)]
            self._composition = (removed.generation, rows)
        return self._composition[1]

    # ------------------------------------------------------------------ stage 1: tokenise
    def prepare(self, request: types.AttributionRequest) -> PreparedQuery:
        """Tokenise and validate; raises :class:`RequestError` with what to fix."""
        t0 = time.perf_counter()
        try:
            if request.messages is not None:
                tokens = tokenize_messages_query([m.model_dump() for m in request.messages], self.tokenizer, self.max_tokens)
            else:
                assert request.prompt is not None and request.response is not None
                tokens = tokenize_query(request.prompt, request.response, self.tokenizer, self.max_tokens)
        except ExampleError as exc:
            raise RequestError(str(exc), param="messages" if request.messages is not None else "response", code=exc.code) from exc
        except Exception as exc:  # tokenizer-level failures (e.g. no chat template)
            raise RequestError(f"cannot tokenise the request: {exc}", param="messages", code="tokenization_failed") from exc
        if tokens.example.n_truncated_tokens:
            raise RequestError(
                f"the request has {tokens.example.n_tokens + tokens.example.n_truncated_tokens} tokens, more than this "
                f"server's limit of {self.max_tokens}{self._limit_reason}; fix: shorten the prompt or response",
                param="response", code="too_many_tokens",
            )
        return PreparedQuery(request, tokens, {"tokenize_ms": _ms(t0)})

    # ------------------------------------------------------------------ stages 2-5
    def attribute(self, queries: Sequence[PreparedQuery]) -> list[types.AttributionResponse]:
        """Answer several prepared queries with one forward/backward and one batched search."""
        if not queries:
            return []
        t0 = time.perf_counter()
        batch = collate([q.tokens.example for q in queries], self.pad_id)
        saturation = self.index.saturation
        emitting = batch.emitting_mask if saturation is not None else None  # [B, T]: the response tokens' positions
        grads = self.computer.compute(batch, positions=emitting)
        gradient_ms = _ms(t0)
        t0 = time.perf_counter()
        token_queries: list[TokenQuery | None] = [None] * len(queries)  # per query: its response tokens [n_t, D]
        influence = self.index.vectors_to_query(grads.vectors)  # [n, D] float32: the linear influence query
        if saturation is None:
            q_vectors = influence
        else:  # saturated: the first stage searches with the standardised tokens' sum
            assert grads.position_terms is not None and emitting is not None
            owner = emitting.nonzero()[:, 0].to(grads.position_terms.device)  # [n]: each term's query (row-major order)
            standardized, weights = self.index.token_queries(grads.position_terms, grads.vectors, owner)
            per_query = saturation.split(standardized, weights, owner, [q.tokens.example for q in queries],
                                         self.index.reference(standardized.device))
            token_queries = list(per_query)
            q_vectors = np.stack([saturation.first_stage_query(t).float().cpu().numpy() for t in per_query])
        precondition_ms = _ms(t0)
        t0 = time.perf_counter()
        shared = self._shared_search(queries, q_vectors)  # one scan of the index for every unfiltered query
        shared_ms = _ms(t0)
        responses = []
        for row, query in enumerate(queries):
            timings = dict(query.timings, gradient_ms=gradient_ms, precondition_ms=precondition_ms)
            responses.append(self._answer(query, grads.vectors[row], q_vectors[row], influence[row], timings, shared.get(row),
                                          shared_ms, token_queries[row]))
        return responses

    def _fetch_count(self, top_k: int) -> int:
        """Results wanted from the search per direction: ``top_k``, or the candidates to re-rank."""
        return max(top_k, self.token_candidates) if self.index.saturation is not None else top_k

    def _rerank(self, hits: list[Hit], token_query: TokenQuery | None, top_k: int) -> list[Hit]:
        """Saturated rankings: re-score the candidates exactly and keep ``top_k`` per direction."""
        if token_query is None or not hits:  # linear: the search already returned top_k per direction
            return hits
        assert self.index.saturation is not None
        out: list[Hit] = []
        for direction in dict.fromkeys(h[2] for h in hits):
            ids = np.array([h[0] for h in hits if h[2] == direction], dtype=np.int64)
            sign = 1.0 if direction == "helpful" else -1.0
            stored = torch.from_numpy(self.index.stored_vectors(ids)).to(token_query.vectors.device, torch.float64)  # [C, D]
            token_scores = token_query.vectors @ stored.T  # [n_t, C]
            saturated = self.index.saturation.aggregate(token_scores, token_query,
                                                        harmful=direction == "harmful").cpu().numpy()  # [C]
            order = np.argsort(-saturated, kind="stable")[:top_k]
            out += [(int(ids[i]), sign * float(saturated[i]), direction) for i in order]
        return out

    def _shared_search(self, queries: Sequence[PreparedQuery], q_vectors: np.ndarray) -> dict[int, list[Hit]]:
        """Search all unfiltered queries (both signs as needed) in one batched scan."""
        rows, signs, owners = [], [], []
        for row, query in enumerate(queries):
            if _filtered(query.request):
                continue
            for direction in _directions(query.request):
                rows.append(q_vectors[row] * (1.0 if direction == "helpful" else -1.0))
                signs.append(direction)
                owners.append(row)
        if not rows:
            return {}
        k = max(self._fetch_count(queries[row].request.top_k) for row in owners)
        result = self.index.search(np.stack(rows), k)
        out: dict[int, list[Hit]] = {}
        for n, (row, direction) in enumerate(zip(owners, signs)):
            sign = 1.0 if direction == "helpful" else -1.0  # harmful = the largest ⟨stored, −q⟩
            top_k = self._fetch_count(queries[row].request.top_k)
            out.setdefault(row, []).extend(
                (int(i), sign * float(s), direction) for i, s in zip(result.ids[n][:top_k], result.scores[n][:top_k]) if i >= 0
            )
        return out

    def _answer(self, query: PreparedQuery, g: torch.Tensor, q: np.ndarray, influence: np.ndarray, timings: dict[str, float],
                shared: list[Hit] | None, shared_ms: float, token_query: TokenQuery | None = None
                ) -> types.AttributionResponse:
        """``q`` is the search query (the first stage's under a saturated ranking); ``influence`` the
        linear influence query, whose shares the training-side token scores are."""
        request = query.request
        t0 = time.perf_counter()
        if shared is not None or not _filtered(request):
            hits = shared or []
            timings["search_ms"] = shared_ms
        else:
            allowed = self.index.store.ids_matching(source=request.filters.source, provider=request.filters.provider)  # type: ignore[union-attr]
            hits = []
            for direction in _directions(request):
                sign = 1.0 if direction == "helpful" else -1.0
                result = self.index.search((sign * q)[None, :], self._fetch_count(request.top_k), allowed_ids=allowed)
                hits += [(int(i), sign * float(s), direction) for i, s in zip(result.ids[0], result.scores[0]) if i >= 0]
            timings["search_ms"] = _ms(t0)
        t0 = time.perf_counter()
        hits = self._rerank(hits, token_query, request.top_k)
        timings["rerank_ms"] = _ms(t0)
        t0 = time.perf_counter()
        records = self.index.store.get_many([h[0] for h in hits])
        removed = self.index.removed()  # the search dropped them already; a removal that landed since is honoured too
        hits = [h for h in hits if h[0] in records and h[0] not in removed]
        timings["fetch_ms"] = _ms(t0)
        t0 = time.perf_counter()
        response_scores: list[types.TokenScore] | None = None
        per_example_response: np.ndarray | None = None
        training_tokens: list[list[types.TokenScore]] = []
        if request.token_wise and hits:
            ids = np.array([h[0] for h in hits], dtype=np.int64)
            response_scores, per_example_response = self._response_token_scores(query.tokens, g, self.index.stored_vectors(ids))
            training_tokens = self._training_token_scores([records[i] for i in ids.tolist()], influence)
        timings["token_wise_ms"] = _ms(t0)
        t0 = time.perf_counter()
        verbatim: list[types.VerbatimEvidence | None] = [None] * len(hits)
        want_spans = request.verbatim is not False
        if want_spans or request.evidence:
            prompt = prompt_text(request)
            verbatim = [verbatim_evidence(records[h[0]].text, query.tokens.response_text, prompt) for h in hits]
        blocks: list[types.Evidence | None] = [None] * len(hits)
        if request.evidence and hits:
            ids = np.array([h[0] for h in hits], dtype=np.int64)
            linear = self.index.stored_vectors(ids).astype(np.float64) @ influence.astype(np.float64)  # [n]
            blocks = [evidence_block(float(linear[n]), v, per_example_response[n] if per_example_response is not None else None)
                      for n, v in enumerate(verbatim) if v is not None]
        timings["verbatim_ms"] = _ms(t0)
        examples = []
        for n, (example_id, score, direction) in enumerate(hits):
            rec = records[example_id]
            examples.append(types.AttributedExample(
                example_id=example_id, score=score, direction=direction, text=rec.text[: self.snippet_chars],
                source=rec.source, provider=rec.provider, **self.views.provenance(rec),
                token_scores=[t for t in training_tokens[n] if t.end <= self.snippet_chars] if training_tokens else None,
                response_token_scores=per_example_response[n].tolist() if per_example_response is not None else None,
                verbatim=verbatim[n] if want_spans else None, evidence=blocks[n],
            ))
        timings["total_ms"] = _ms(query.received)
        return types.AttributionResponse(
            id=_attribution_id(self.index_id, request), index_id=self.index_id, score_variant=self.index.manifest.score_variant,
            examples=examples, response_token_scores=response_scores, timings=types.StageTimings(**timings),
        )

    # ------------------------------------------------------------------ token-wise
    def _response_token_scores(self, tokens: QueryTokens, g: torch.Tensor, stored: np.ndarray
                               ) -> tuple[list[types.TokenScore], np.ndarray]:
        """Each returned example's score split over the response tokens, and their sum.

        One more forward/backward of the query, its hooks scoring every position against the
        dual weights of all returned examples at once.
        """
        weights = self.index.dual_weights("query", stored)  # [n, D_proj]
        grads = self.computer.compute(collate([tokens.example], self.pad_id), position_weights=weights[None])
        assert grads.position_scores is not None
        per_pos = self.index.combine_position_scores("query", g[None], grads.position_scores)[0]  # [n, T]
        start = tokens.response_start
        positions = [start + j - 1 for j in range(len(tokens.response_token_strings))]  # position emitting token j
        per_token = per_pos[:, positions]  # [n, n_response_tokens]
        totals = per_token.sum(0)
        out = []
        for j, (text, span) in enumerate(zip(tokens.response_token_strings, tokens.response_offsets)):
            a, b = span if span is not None else (-1, -1)
            out.append(types.TokenScore(token=text, token_id=int(tokens.example.input_ids[start + j]), start=a, end=b,
                                        score=float(totals[j])))
        return out, per_token

    def _training_token_scores(self, records: list[StoredExample], q: np.ndarray) -> list[list[types.TokenScore]]:
        """Recompute the returned examples' gradients (one batch) and score each emitted token."""
        examples = [tokenize_record(r.to_record(), self.tokenizer, self.max_tokens) for r in records]
        weights = self.index.dual_weights("train", q[None]).expand(len(examples), -1)[:, None, :]  # [n, 1, D_proj]
        grads = self.computer.compute(collate(examples, self.pad_id), position_weights=weights)
        assert grads.position_scores is not None
        per_pos = self.index.combine_position_scores("train", grads.vectors, grads.position_scores)[:, 0]  # [n, T]
        return [_aligned_token_scores(ex, per_pos[n], rec.text, self.tokenizer) for n, (ex, rec) in enumerate(zip(examples, records))]


Hit = tuple[int, float, Literal["helpful", "harmful"]]


def _filtered(request: types.AttributionRequest) -> bool:
    f = request.filters
    return f is not None and (f.source is not None or f.provider is not None)


def _directions(request: types.AttributionRequest) -> list[Literal["helpful", "harmful"]]:
    return ["helpful", "harmful"] if request.direction == "both" else [request.direction]  # type: ignore[list-item]


def _aligned_token_scores(example: TokenizedExample, per_pos: np.ndarray, text: str, tokenizer: Any) -> list[types.TokenScore]:
    """Token strings with character offsets into ``text`` (found left to right), target tokens only."""
    out = []
    cursor = 0
    for t, token_id in enumerate(example.input_ids):
        piece = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        found = text.find(piece, cursor) if piece else -1
        if found >= 0 and found - cursor <= 16:
            start, end = found, found + len(piece)
            cursor = end
        else:
            start = end = -1
        if t == 0 or not example.target_mask[t] or start < 0:
            continue
        out.append(types.TokenScore(token=piece, token_id=int(token_id), start=start, end=end, score=float(per_pos[t - 1])))
    return out


def _attribution_id(index_id: str, request: types.AttributionRequest) -> str:
    """Content-addressed: the same request to the same index gets the same id (and answer)."""
    digest = hashlib.sha256((index_id + "\n" + request.model_dump_json()).encode()).hexdigest()
    return f"attr_{digest[:24]}"
