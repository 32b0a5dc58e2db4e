"""Resumable batch runner and the data-valuation report."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import tributary_client as tc
from client_fakes import BASE_URL, FakeTributary
from tributary_client import batch_runner
from tributary_client.batch_runner import read_done_ids, run_batch
from tributary_client.report import compute_report, write_report
from tributary_client.types import IndexInfo

N = 200
REJECTED = {17, 88, 150}


def _logs(tmp_path: Path) -> Path:
    lines = []
    for i in range(N):
        text = f"answer number {i}" + (" REJECT-ME" if i in REJECTED else "")
        if i % 3 == 0:
            lines.append({"custom_id": f"gen-{i:03d}", "prompt": f"question {i}", "response": text})
        elif i % 3 == 1:
            lines.append(
                {
                    "id": f"gen-{i:03d}",
                    "messages": [
                        {"role": "user", "content": f"q{i}"},
                        {"role": "assistant", "content": text},
                    ],
                }
            )
        else:
            lines.append(
                {
                    "custom_id": f"gen-{i:03d}",
                    "request": {"messages": [{"role": "user", "content": f"q{i}"}]},
                    "response": {"choices": [{"message": {"role": "assistant", "content": text}}]},
                }
            )
    path = tmp_path / "logs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _client(fake: FakeTributary, max_retries: int = 2) -> tc.Client:
    c = tc.Client(BASE_URL, transport=httpx.MockTransport(fake), max_retries=max_retries)
    c._sleep = lambda s: None  # type: ignore[method-assign]
    return c


@pytest.fixture
def reference(tmp_path: Path) -> tuple[Path, bytes, bytes, bytes]:
    """An uninterrupted run: logs path, output bytes, report CSV and Markdown bytes."""
    logs = _logs(tmp_path)
    out = tmp_path / "reference.jsonl"
    summary = run_batch(_client(FakeTributary()), logs, out, concurrency=4, top_k=5, progress=False)
    assert (summary.total, summary.skipped, summary.succeeded, summary.failed) == (N, 0, N - 3, 3)
    csv_path, md_path, _ = write_report(out, tmp_path / "reference-report")
    return logs, out.read_bytes(), Path(csv_path).read_bytes(), Path(md_path).read_bytes()


def test_output_is_in_input_order_whatever_the_concurrency(tmp_path: Path, reference) -> None:
    logs, expected, _, _ = reference
    lines = expected.decode().splitlines()
    assert len(lines) == N
    assert [json.loads(x)["custom_id"] for x in lines] == [f"gen-{i:03d}" for i in range(N)]
    errors = [json.loads(x) for x in lines if json.loads(x)["error"]]
    assert [e["custom_id"] for e in errors] == [f"gen-{i:03d}" for i in sorted(REJECTED)]
    assert (
        errors[0]["error"]["type"] == "invalid_request_error"
        and errors[0]["error"]["param"] == "response"
    )
    for concurrency in (1, 9):
        out = tmp_path / f"c{concurrency}.jsonl"
        run_batch(
            _client(FakeTributary()), logs, out, concurrency=concurrency, top_k=5, progress=False
        )
        assert out.read_bytes() == expected


def test_killed_and_resumed_run_is_byte_identical(
    tmp_path: Path, reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs, expected, ref_csv, ref_md = reference
    out = tmp_path / "resumed.jsonl"

    # 1. the server goes away after 73 requests: the run stops with the connection error
    dying = FakeTributary()
    dying.fail_after = 73
    with pytest.raises(tc.APIConnectionError):
        run_batch(_client(dying, max_retries=0), logs, out, concurrency=4, top_k=5, progress=False)
    partial = out.read_bytes()
    assert 0 < len(partial) < len(expected) and expected.startswith(partial)
    done_first = len(partial.splitlines())
    assert done_first <= 73

    # 2. the process dies in the middle of writing a line (a torn last line)
    real_write = batch_runner._write_line
    writes = {"n": 0}

    def dying_write(f, line):  # type: ignore[no-untyped-def]
        writes["n"] += 1
        if writes["n"] == 40:
            data = line.model_dump_json().encode()
            f.write(data[: len(data) // 2])  # half a line, no newline
            f.flush()
            raise KeyboardInterrupt
        real_write(f, line)

    monkeypatch.setattr(batch_runner, "_write_line", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run_batch(_client(FakeTributary()), logs, out, concurrency=4, top_k=5, progress=False)
    monkeypatch.setattr(batch_runner, "_write_line", real_write)
    torn = out.read_bytes()
    assert not torn.endswith(b"\n") and len(torn.splitlines()) == done_first + 40

    # 3. resume: truncates the torn line, skips what is done, finishes
    healthy = FakeTributary()
    summary = run_batch(_client(healthy), logs, out, concurrency=4, top_k=5, progress=False)
    assert summary.skipped == done_first + 39
    assert healthy.attributions == N - summary.skipped  # nothing done twice
    assert out.read_bytes() == expected

    # 4. a finished run is a no-op, and the report is identical
    again = FakeTributary()
    summary = run_batch(_client(again), logs, out, concurrency=4, top_k=5, progress=False)
    assert (summary.skipped, again.attributions) == (N, 0) and out.read_bytes() == expected
    (tmp_path / "resumed").mkdir()
    csv_path, md_path, _ = write_report(
        out, tmp_path / "resumed" / "reference-report"
    )  # same name: same chart link
    assert Path(csv_path).read_bytes() == ref_csv and Path(md_path).read_bytes() == ref_md


def test_refuses_foreign_or_corrupt_output(tmp_path: Path) -> None:
    logs = _logs(tmp_path)
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"custom_id": "someone-else", "response": None}) + "\n")
    with pytest.raises(ValueError, match="not in"):
        run_batch(_client(FakeTributary()), logs, out, progress=False)
    out.write_text("garbage\n")
    with pytest.raises(ValueError, match=":1: not a batch result line"):
        read_done_ids(out)
    out.write_text(json.dumps({"custom_id": "a"}) + "\n" + json.dumps({"custom_id": "a"}) + "\n")
    with pytest.raises(ValueError, match="appears twice"):
        read_done_ids(out)
    out.write_text(json.dumps({"custom_id": "a"}) + "\n" + '{"custom_id": "b", "resp')
    assert read_done_ids(out) == ["a"] and out.read_text().endswith("}\n")
    with pytest.raises(ValueError, match="concurrency"):
        run_batch(_client(FakeTributary()), logs, out, concurrency=0)


def test_auth_error_stops_the_run(tmp_path: Path) -> None:
    fake = FakeTributary()
    fake.on_request = lambda r: httpx.Response(
        401, json={"error": {"message": "bad key", "type": "authentication_error"}}
    )
    out = tmp_path / "out.jsonl"
    with pytest.raises(tc.AuthenticationError):
        run_batch(_client(fake), _logs(tmp_path), out, progress=False)
    assert out.read_bytes() == b""


def _result(custom_id: str, examples: list[tuple[int, float, str | None, str | None]]) -> str:
    exs = [
        {
            "example_id": i,
            "score": s,
            "direction": "helpful" if s > 0 else "harmful",
            "text": "t",
            "source": src,
            "provider": prov,
            "record_id": None if i == 3 else f"rec-{i}",
        }
        for i, s, src, prov in examples
    ]
    resp = {"id": "a", "index_id": "idx", "score_variant": "relatif", "examples": exs}
    return json.dumps({"custom_id": custom_id, "response": resp, "error": None}) + "\n"


def test_report_numbers(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text(
        _result(
            "a", [(1, 3.0, "wiki", "acme"), (2, 1.0, "code", "globex"), (3, -2.0, "wiki", "acme")]
        )
        + _result("b", [(2, 2.0, "code", "globex"), (1, 1.0, "wiki", "acme"), (4, 1.0, None, None)])
        + json.dumps({"custom_id": "c", "error": {"message": "x", "type": "invalid_request_error"}})
        + "\n"
    )
    report = compute_report(results)
    assert (report.results, report.errors) == (2, 1)
    acme = report.groups[("provider", "acme")]
    assert (acme.positive_influence, acme.negative_influence) == (4.0, -2.0)
    assert (acme.helpful_appearances, acme.harmful_appearances) == (2, 1)
    assert acme.mean_rank == pytest.approx((1 + 1 + 2) / 3)  # harmful ranks count separately
    assert acme.top_example_ids() == [1, 3]
    assert acme.top_records() == ["rec-1", "#3"]  # a record without its own id shows its example id
    csv_path, md_path, svg_path = write_report(results, tmp_path / "rep")
    rows = Path(csv_path).read_text().splitlines()
    assert rows[0].startswith("group_by,key,positive_influence,share_of_positive")
    assert rows[0].endswith(",top_records,corpus_examples,corpus_share,representation")
    assert rows[1] == "provider,acme,4.000000,0.500000,-2.000000,3,2,1,1.33,2,1 3,rec-1 #3,,,"
    assert rows[2] == "provider,globex,3.000000,0.375000,0.000000,2,2,0,1.50,1,2,rec-2,,,"
    assert rows[3].startswith("provider,(unknown),1.000000,0.125000")
    assert [r.split(",")[1] for r in rows[4:]] == ["wiki", "code", "(unknown)"]
    md = Path(md_path).read_text()
    assert (
        "## By provider" in md
        and "| acme | n/a | 50.00% | n/a | 4.0000 |" in md
        and "| rec-1, #3 |" in md
    )
    assert "attributed generations: 2" in md and "failed generations: 1" in md
    assert (
        "Corpus shares are not included" in md
        and "![Influence share against corpus share per provider](rep.svg)" in md
    )
    assert Path(svg_path).read_text().startswith("<svg ")


def _info(index_id: str = "idx", **counts: int) -> IndexInfo:
    rows = [
        {"group_by": "provider", "key": None if k == "none" else k, "examples": n, "tokens": 10 * n}
        for k, n in counts.items()
    ]
    rows += [{"group_by": "source", "key": "all", "examples": sum(counts.values()), "tokens": 0}]
    return IndexInfo.model_validate(
        {
            "index_id": index_id,
            "format_version": 1,
            "model": {},
            "projector": {},
            "score_variant": "influence",
            "damping": 1.0,
            "n_examples": sum(counts.values()),
            "dim": 8,
            "shards": 1,
            "created_at": "x",
            "composition": rows,
        }
    )


def test_report_corpus_shares_and_chart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Share of the corpus, share of positive influence and their ratio per provider; a chart of
    both."""
    results = tmp_path / "r.jsonl"
    results.write_text(
        _result("a", [(1, 3.0, "wiki", "acme"), (2, 1.0, "code", "globex")])
        + _result("b", [(4, 4.0, "wiki", "acme")])
    )
    # acme: 10 % of the corpus and 7/8 of the influence; globex 40 % and 1/8; initech 50 % and never
    # attributed
    report = compute_report(results, _info(acme=10, globex=40, initech=50))
    acme, globex, initech = (report.groups[("provider", k)] for k in ("acme", "globex", "initech"))
    assert report.corpus_share(acme) == pytest.approx(0.1) and report.share_of_positive(
        acme
    ) == pytest.approx(7 / 8)
    assert report.representation(acme) == pytest.approx(8.75)
    assert report.representation(globex) == pytest.approx((1 / 8) / 0.4)
    assert report.representation(initech) == 0.0 and initech.appearances == 0
    csv_path, md_path, svg_path = write_report(
        results, tmp_path / "rep", _info(acme=10, globex=40, initech=50)
    )
    rows = {r.split(",")[1]: r.split(",") for r in Path(csv_path).read_text().splitlines()[1:4]}
    assert rows["acme"][-3:] == ["10", "0.100000", "8.7500"]
    assert rows["initech"][-3:] == ["50", "0.500000", "0.0000"]
    md = Path(md_path).read_text()
    assert (
        "| acme | 10.00% | 87.50% | 8.75× (over) |" in md
        and "| globex | 40.00% | 12.50% | 0.31× (under) |" in md
    )
    svg = Path(svg_path).read_text()
    assert svg.count("<title>") == 6 and "×8.75" in svg and "×0.31" in svg and "initech" in svg
    import xml.dom.minidom

    xml.dom.minidom.parseString(svg)  # well-formed
    # the composition of another index is not mixed in
    caplog.set_level("WARNING")
    other = compute_report(results, _info("other-index", acme=10))
    assert other.composition_index is None and "corpus shares left out" in caplog.text


def _messy_logs(path: Path, fixed: bool = False) -> Path:
    """Real-log trouble: an empty reply, a line that is not JSON, a repeated id, a refused
    request."""
    lines = [
        json.dumps({"custom_id": f"ok-{i}", "prompt": f"q{i}", "response": f"a{i}"})
        for i in range(6)
    ]
    lines.insert(
        1,
        json.dumps(
            {
                "id": "chatcmpl-empty",
                "request": {"messages": [{"role": "user", "content": "hi"}]},
                "response": {
                    "choices": [
                        {"message": {"role": "assistant", "content": "hello" if fixed else ""}}
                    ]
                },
            }
        ),
    )
    lines.insert(3, '{"prompt": "q", "response": "truncated' + ('"}' if fixed else ""))
    lines.insert(5, json.dumps({"custom_id": "ok-0", "prompt": "again", "response": "dup"}))
    lines.insert(
        7,
        json.dumps(
            {"custom_id": "refused", "prompt": "q", "response": "fine" if fixed else "REJECT-ME"}
        ),
    )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_lines_are_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    logs, out = _messy_logs(tmp_path / "logs.jsonl"), tmp_path / "out.jsonl"
    fake = FakeTributary()
    summary = run_batch(_client(fake), logs, out, progress=False)
    assert (summary.total, summary.succeeded, summary.failed, summary.failed_total) == (10, 6, 4, 4)
    assert fake.attributions == 7  # the three unusable lines never reach the server
    results = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [
        "ok-0",
        "chatcmpl-empty",
        "ok-1",
        "line-4",
        "ok-2",
        "line-6",
        "ok-3",
        "refused",
        "ok-4",
        "ok-5",
    ]
    errors = {r["custom_id"]: r["error"] for r in results if r["error"]}
    assert errors["chatcmpl-empty"]["code"] == "invalid_log_line"
    assert (
        errors["chatcmpl-empty"]["message"]
        == f"{logs}:2: the last (assistant) message is empty: nothing to attribute"
    )
    assert errors["line-4"]["code"] == "invalid_json" and errors["line-4"]["message"].startswith(
        f"{logs}:4: not valid JSON"
    )
    assert (
        errors["line-6"]["code"] == "duplicate_id"
        and "first seen on line 1" in errors["line-6"]["message"]
    )
    assert errors["refused"] == {
        "message": "response is too long for the model",
        "type": "invalid_request_error",
        "param": "response",
        "code": "too_long",
    }
    assert [(r, n) for r, n, _ in summary.failure_reasons()] == [
        ("duplicate_id", 1),
        ("invalid_json", 1),
        ("invalid_log_line", 1),
        ("too_long", 1),
    ]

    # a plain rerun keeps the recorded failures (and still reports them); nothing is sent
    again = FakeTributary()
    summary = run_batch(_client(again), logs, out, progress=False)
    assert (
        summary.skipped,
        summary.succeeded,
        summary.failed,
        summary.failed_total,
        again.attributions,
    ) == (10, 0, 0, 4, 0)


def test_retry_failed_puts_new_results_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs, out = _messy_logs(tmp_path / "logs.jsonl"), tmp_path / "out.jsonl"
    run_batch(_client(FakeTributary()), logs, out, progress=False)
    _messy_logs(logs, fixed=True)  # the user fixes the three fixable lines in place
    reference = tmp_path / "reference.jsonl"
    run_batch(
        _client(FakeTributary()), logs, reference, progress=False
    )  # what a fresh run gives now

    # a retry that dies after one retried result: the .retry file holds it, nothing is torn
    real_write = batch_runner._write_line
    writes = {"n": 0}

    def dying_write(f, line):  # type: ignore[no-untyped-def]
        writes["n"] += 1
        if writes["n"] == 2:
            raise KeyboardInterrupt
        real_write(f, line)

    monkeypatch.setattr(batch_runner, "_write_line", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run_batch(_client(FakeTributary()), logs, out, progress=False, retry_failed=True)
    monkeypatch.setattr(batch_runner, "_write_line", real_write)
    assert (tmp_path / "out.jsonl.retry").exists()

    fake = FakeTributary()
    summary = run_batch(_client(fake), logs, out, progress=False, retry_failed=True)
    assert not (tmp_path / "out.jsonl.retry").exists()
    assert out.read_bytes() == reference.read_bytes()  # same order and content as a fresh run
    assert summary.retried == 3  # the first retried line was merged before this run
    assert (summary.succeeded, summary.failed, summary.failed_total) == (
        2,
        1,
        1,
    )  # the repeated id stays failed
    assert fake.attributions == 2
    assert [r for r, _, _ in summary.failure_reasons()] == ["duplicate_id"]


def test_route_not_found_stops_the_run(tmp_path: Path) -> None:
    """A 404 concerns every line (wrong --base-url): stop rather than record 10 failures."""
    fake = FakeTributary()
    fake.on_request = lambda r: httpx.Response(
        404, json={"error": {"message": "no route", "type": "not_found_error"}}
    )
    out = tmp_path / "out.jsonl"
    with pytest.raises(tc.NotFoundError):
        run_batch(_client(fake), _messy_logs(tmp_path / "logs.jsonl"), out, progress=False)
    assert [json.loads(x)["custom_id"] for x in out.read_text().splitlines()] == []
