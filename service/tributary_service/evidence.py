"""Verbatim spans and the evidence block of returned examples (see
:mod:`tributary_indexer.query.verbatim`).

Influence says which training example taught the model the response; verbatim spans say which
one it may have copied from. Both are computed for the returned examples only, on each example
text's first :data:`MAX_TEXT_CHARS` characters, for the response and the prompt.
"""

from __future__ import annotations

import logging

import numpy as np
from tributary_client import types
from tributary_indexer.query.verbatim import SpanReport, TextMatcher, find_shared_spans

logger = logging.getLogger(__name__)

__all__ = ["MAX_TEXT_CHARS", "prompt_text", "verbatim_evidence", "evidence_block"]

MAX_TEXT_CHARS = 8_000
"""Characters of each example searched for shared spans (bounds the cost of a long document)."""


def prompt_text(request: types.AttributionRequest) -> str:
    """The prompt side of a request: ``prompt``, or the turns before the last message joined by
    blank lines."""
    if request.messages is not None:
        return "\n\n".join(m.content for m in request.messages[:-1])
    return request.prompt or ""


def _spans(report: SpanReport) -> list[types.VerbatimSpan]:
    return [
        types.VerbatimSpan(
            start=s.query_start, end=s.query_end, example_start=s.text_start, example_end=s.text_end
        )
        for s in report.spans
    ]


def verbatim_evidence(text: str, response: str, prompt: str) -> types.VerbatimEvidence:
    """The spans ``text`` shares with the response and the prompt, and the shares they cover."""
    matcher = TextMatcher(text[:MAX_TEXT_CHARS])
    # the prompt first: when it is long enough to need the automaton, the response walks it too
    on_prompt = find_shared_spans(prompt, matcher.text, matcher=matcher)
    on_response = find_shared_spans(response, matcher.text, matcher=matcher)
    return types.VerbatimEvidence(
        response_spans=_spans(on_response),
        prompt_spans=_spans(on_prompt),
        response_coverage=on_response.coverage,
        prompt_coverage=on_prompt.coverage,
        longest_response_span=on_response.longest,
    )


def evidence_block(
    influence: float, verbatim: types.VerbatimEvidence, token_shares: np.ndarray | None
) -> types.Evidence:
    """Influence, verbatim share and (with token-wise shares) the peak token of one example."""
    peak = (
        int(np.argmax(np.abs(token_shares)))
        if token_shares is not None and len(token_shares)
        else None
    )
    return types.Evidence(
        influence=influence,
        verbatim_share=verbatim.response_coverage,
        longest_verbatim_chars=verbatim.longest_response_span,
        token_peak=float(token_shares[peak])
        if peak is not None and token_shares is not None
        else None,
        token_peak_index=peak,
    )
