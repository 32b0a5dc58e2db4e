"""Attribution quality through the service's own query pipeline, on the demo's planted facts.

A real index of the whole demo corpus (2,100 documents) built with the default configuration,
queried through :class:`AttributionEngine` exactly as ``POST /v1/attributions`` does, with the
held-out fact questions (phrased unlike any training document) and their answer sentences.

Measured with the default configuration on all 390 fact questions (2026-12-01, rank 64 → RapidGrad
K = 4,096, α = 16): a stating document ranks first for 85% of them (330) and is in the top 10 for
all 390; where it ranks first, the response token with the largest share of its score is an answer
token for 58% (191); in the question checked by hand below it is the subject's name, which the
stating document also teaches ("Zurvae" → " Pialdaley"), with the answer next. Per-module Fisher
blocks without RapidGrad put the answer first more often (73% at rank 64, 72% at rank 32) but rank
the stating document first less often (81%, 78%); ``benchmarks/RESULTS.md`` has the trade-off. On
the every-third subset used here the default gives 106/130 first, 130/130 in the top 10 and 61/106
answer tokens. The thresholds sit under those figures; the NLL objective (an earlier default) ranks
a stating document first for at most 36% and in the top 10 for 55%, and an unrelated token carries
the largest share about one time in four.
"""

from __future__ import annotations

import sqlite3

import pytest
from tributary_client import types

pytestmark = pytest.mark.slow

EVERY_NTH_QUESTION = 3  # 130 of the 390 questions keep the test near half a minute


@pytest.fixture(scope="module")
def demo_service(tmp_path_factory):
    from tributary_indexer.build.builder import IndexBuilder
    from tributary_indexer.config import BuildConfig
    from tributary_service.loading import load_service
    from tributary_service.settings import ServiceSettings

    from demo.tools import demo_root

    root = demo_root()
    out = tmp_path_factory.mktemp("demo-quality")
    config = BuildConfig(
        model=str(root / "model"), corpus=[str(root / "corpus")], progress=False, num_threads=1
    )
    IndexBuilder(config, out / "index").build()
    service = load_service(
        ServiceSettings(
            index=out / "index", model=root / "model", state_dir=out / "state", num_threads=1
        )
    )
    with sqlite3.connect(out / "index" / "examples.sqlite") as con:
        doc_ids = dict(con.execute("SELECT id, external_id FROM examples").fetchall())
    return service, doc_ids, root / "corpus"


def _answer_span(response: str, answer: str) -> tuple[int, int]:
    start = response.index(answer)
    return start, start + len(answer)


def test_planted_facts_rank_first_and_answer_tokens_weigh_most(demo_service):
    from demo.tools.corpus_generator import load_ground_truth

    service, doc_ids, corpus = demo_service
    truth = load_ground_truth(corpus)
    facts = {f.fact_id: f for f in truth.facts}
    questions = [q for q in truth.queries if q.kind == "fact"][::EVERY_NTH_QUESTION]
    first = in_top10 = answer_weighs_most = 0
    for q in questions:
        fact = facts[q.fact_id]
        request = types.AttributionRequest(
            prompt=q.prompt, response=q.response, top_k=10, token_wise=True
        )
        response = service.engine.attribute([service.engine.prepare(request)])[0]
        ranked = [doc_ids[e.example_id] for e in response.examples]
        stating = set(fact.stating_doc_ids)
        in_top10 += bool(stating & set(ranked))
        if ranked[0] not in stating:
            continue
        first += 1
        # the stating document's score split over the response tokens: the largest share
        # should sit on the answer ("... lives in Stenholm." -> " Stenholm")
        shares = response.examples[0].response_token_scores
        tokens = response.response_token_scores
        assert shares is not None and tokens is not None and len(shares) == len(tokens)
        best = tokens[max(range(len(shares)), key=shares.__getitem__)]
        lo, hi = _answer_span(q.response, fact.object)
        answer_weighs_most += (
            best.start >= lo - 1 and best.end <= hi
        )  # a leading space belongs to the token
    n = len(questions)
    print(
        f"stating document in the top 10: {in_top10}/{n}, first: {first}/{n}; answer token weighs "
        f"most: {answer_weighs_most}/{first}"
    )
    assert in_top10 / n >= 0.9, (
        f"a stating document is in the top 10 for only {in_top10}/{n} questions"
    )
    assert first / n >= 0.75, f"a stating document ranks first for only {first}/{n} questions"
    assert answer_weighs_most / first >= 0.5, (
        f"the answer tokens carry the largest share for only {answer_weighs_most}/{first} "
        "first-ranked documents"
    )


def test_a_planted_fact_traced_end_to_end(demo_service):
    """One concrete question, as a reader would check it by hand."""
    from demo.tools.corpus_generator import load_ground_truth

    service, doc_ids, corpus = demo_service
    truth = load_ground_truth(corpus)
    fact = next(
        f for f in truth.facts if f.fact_id == "fact-0001"
    )  # Zurvae Pialdaley lives in Stenholm
    query = next(q for q in truth.queries if q.fact_id == fact.fact_id)
    request = types.AttributionRequest(
        prompt=query.prompt, response=query.response, top_k=5, token_wise=True
    )
    response = service.engine.attribute([service.engine.prepare(request)])[0]
    top = response.examples[0]
    assert doc_ids[top.example_id] in fact.stating_doc_ids
    assert fact.object in (top.text or "")
    shares = top.response_token_scores
    assert shares is not None
    tokens = [t.token.strip() for t in response.response_token_scores or []]
    # The stating document taught the answer and the subject's name (both rare words); the answer
    # outweighs every other token of the response ("lives", "in", "."). Measured: Zurvae 16.2,
    # Pialdaley 23.6, Stenholm 12.3, the rest 1.4–4.3.
    answer = shares[tokens.index(fact.object)]
    others = [
        share
        for token, share in zip(tokens, shares)
        if token != fact.object and token not in fact.subject.split()
    ]
    assert others and answer > 2 * max(others), list(zip(tokens, shares))
    # the training side: within the stating document, the answer is the token that carries it
    assert top.token_scores
    assert max(top.token_scores, key=lambda t: t.score).token.strip() == fact.object, [
        (t.token, round(t.score, 1)) for t in top.token_scores
    ]
