"""Reading logged generations in the common JSONL shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tributary_client.logs import LogFormatError, iter_logged_generations, parse_log_record


def _write(tmp_path: Path, lines: list[object | str]) -> Path:
    path = tmp_path / "logs.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_all_shapes(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            {"prompt": "p1", "response": "r1"},
            {"custom_id": "c2", "prompt": "p2", "completion": "r2"},
            {
                "id": 7,
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "content": "r3"},
                ],
            },
            "",
            {
                "request": {"model": "m", "messages": [{"role": "user", "content": "u4"}]},
                "response": {
                    "id": "chatcmpl-4",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "r4"}}],
                },
            },
            {
                "messages": [
                    {"role": "developer", "content": "d"},
                    {"role": "user", "content": [{"type": "text", "text": "u5"}]},
                ],
                "choices": [
                    {
                        "message": {
                            "role": "assistant",
                            "content": [
                                {"type": "text", "text": "r"},
                                {"type": "text", "text": "5"},
                            ],
                        }
                    }
                ],
            },
            {"prompt": "p6", "choices": [{"text": "r6"}]},
            {
                "custom_id": "c7",
                "request": {"body": {"messages": [{"role": "user", "content": "u7"}]}},
                "response": {
                    "status_code": 200,
                    "body": {"choices": [{"message": {"role": "assistant", "content": "r7"}}]},
                },
            },
        ],
    )
    got = list(iter_logged_generations(path, top_k=3, direction="both"))
    assert [cid for cid, _ in got] == ["line-1", "c2", "7", "chatcmpl-4", "line-6", "line-7", "c7"]
    assert [req.response_text() for _, req in got] == ["r1", "r2", "r3", "r4", "r5", "r6", "r7"]
    assert all(req.top_k == 3 and req.direction == "both" for _, req in got)
    assert got[0][1].prompt == "p1" and got[0][1].messages is None
    assert [m.role for m in got[2][1].messages or []] == ["system", "user", "assistant"]
    assert [m.content for m in got[3][1].messages or []] == ["u4", "r4"]
    assert [(m.role, m.content) for m in got[4][1].messages or []] == [
        ("system", "d"),
        ("user", "u5"),
        ("assistant", "r5"),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"prompt": "p", "response": ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"text": "hello"}', "unrecognised shape"),
        ('{"prompt": "p"}', "no 'response'"),
        ('{"messages": [{"role": "user", "content": "q"}]}', "last message must be the response"),
        ('{"messages": "hi"}', "'messages' must be a list"),
        ('{"messages": [{"role": "user", "content": "q"}], "choices": []}', "non-empty list"),
        ('{"request": {"messages": []}, "response": "text"}', "'response' is not an object"),
        ('{"prompt": "p", "response": ""}', "`response` is empty"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = _write(tmp_path, [{"prompt": "ok", "response": "ok"}, "", line])
    with pytest.raises(LogFormatError) as info:
        list(iter_logged_generations(path))
    assert info.value.line_no == 3 and info.value.path == str(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert reason in str(info.value)


def test_duplicate_ids_rejected(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            {"id": "a", "prompt": "p", "response": "r"},
            {"custom_id": "a", "prompt": "p", "response": "r"},
        ],
    )
    with pytest.raises(LogFormatError, match="duplicate id 'a' \\(first seen on line 1\\)"):
        list(iter_logged_generations(path))


def test_parse_log_record_directly() -> None:
    cid, req = parse_log_record({"prompt": "p", "response": "r"}, token_wise=True)
    assert cid is None and req.token_wise
