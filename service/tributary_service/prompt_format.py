"""How to prompt the served model: the prompt format of its training data, or its chat template.

A model answers best in the form it was trained on. When the index's prompt/response records
share a fixed frame around the question (the demo's ``Question: …\\nAnswer:``), that frame is the
*prompt format*: the text before the question up to a ``:`` or newline, and the text after it from
a newline (or a ``:``-ended marker). It is inferred from a sample of those records (the frame the
most prompts share, when at least :data:`MIN_SHARE` of them do: the demo mixes Q/A with plain
instructions), or set with ``TRIBUTARY_PROMPT_FORMAT`` (``{question}`` marks the question).
Without one, a tokenizer with a chat template gets ``messages``; else the text is sent as typed.
The chat page reads the result from ``GET /v1/index`` (``prompting``).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from tributary_client import types
from tributary_indexer.data.example_store import ExampleStore, StoredExample

logger = logging.getLogger(__name__)

__all__ = ["QUESTION", "SAMPLE", "infer_prompting", "split_format"]

QUESTION = "{question}"
SPREAD = 2048
"""Examples read, evenly spaced over the index, to find prompt/response records."""
SAMPLE = 256
"""Prompt/response records (lowest ids) read instead when the spread finds fewer than 16."""
MIN_SHARE = 0.2
"""The share of the sampled prompts a frame must have to count as the training format."""
_MARKERS = (":", "\n")
_MAX_EXAMPLE_CHARS = 300


def split_format(template: str) -> tuple[str, str]:
    """``(prefix, suffix)`` of a template holding ``{question}`` once; ValueError otherwise."""
    if template.count(QUESTION) != 1:
        raise ValueError(f"a prompt format must hold {QUESTION} exactly once, got {template!r}")
    prefix, suffix = template.split(QUESTION)
    return prefix, suffix


def _frame(prompts: list[str]) -> tuple[str, str] | None:
    """The shared prefix/suffix of ``prompts``, cut back to format markers; None when there is
    none."""
    prefix = os.path.commonprefix(prompts)
    suffix = os.path.commonprefix([p[::-1] for p in prompts])[::-1]
    if len(prefix) + len(suffix) >= min(
        len(p) for p in prompts
    ):  # no room for a question in some prompt
        return None
    cut = max(prefix.rfind(m) for m in _MARKERS)  # "Question: Where did " -> "Question: "
    if cut < 0:
        prefix = ""
    else:
        rest = prefix[cut + 1 :]
        prefix = prefix[: cut + 1] + rest[: len(rest) - len(rest.lstrip(" "))]
    if "\n" in suffix:  # "?\nAnswer:" -> "\nAnswer:"
        suffix = suffix[suffix.index("\n") :]
    else:  # "? A:" -> " A:"
        marker = re.search(r"\s\S*:\s*$", suffix)
        suffix = suffix[marker.start() :] if marker else ""
    if not (prefix.strip() or suffix.strip()):
        return None
    return prefix, suffix


def _key(prompt: str) -> tuple[str, str]:
    """A prompt's frame candidates: up to its first marker (within the first 48 characters, with the
    spaces after it) and from its last newline."""
    firsts = [i for i in (prompt.find(m, 0, 48) for m in _MARKERS) if i >= 0]
    prefix = ""
    if firsts:
        end = min(firsts) + 1
        end += len(prompt[end:]) - len(prompt[end:].lstrip(" "))
        prefix = prompt[:end] if end < len(prompt) else ""
    last = prompt.rfind("\n")
    suffix = prompt[last:] if last >= len(prefix) else ""
    return prefix, suffix


def _majority_frame(
    records: list[StoredExample],
) -> tuple[tuple[str, str], list[StoredExample]] | None:
    """The frame most prompts share (at least :data:`MIN_SHARE` of them), with those records."""
    groups: dict[tuple[str, str], list[StoredExample]] = {}
    for record in records:
        key = _key(record.prompt or "")
        if (key[0] + key[1]).strip():  # a frame of whitespace only is no format
            groups.setdefault(key, []).append(record)
    if not groups:
        return None
    key, members = max(groups.items(), key=lambda kv: (len(kv[1]), -kv[1][0].id))
    if len(members) < 2 or len(members) < MIN_SHARE * len(records):
        return None
    return _frame([m.prompt or "" for m in members]) or key, members


def _sample(store: ExampleStore) -> list[StoredExample]:
    """Prompt/response records: evenly spread over the index, else the first ones."""
    n = store.count()
    step = max(1, n // SPREAD)
    spread = store.get_many(range(0, n, step))
    records = [r for _, r in sorted(spread.items()) if r.kind == "prompt_response" and r.prompt]
    if len(records) < 16:
        records = [r for r in store.first_of_kind("prompt_response", SAMPLE) if r.prompt]
    return records


def infer_prompting(
    store: ExampleStore, tokenizer: Any, configured: str | None = None
) -> types.PromptingInfo:
    """The :class:`~tributary_client.types.PromptingInfo` of an index and its model's tokenizer."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    records = _sample(store)
    prompt_format: str | None = None
    source: str | None = None
    example: str | None = None
    stop: list[str] = []
    if configured:
        prefix, suffix = split_format(configured)
        prompt_format, source = configured, "configured"
    else:
        found = _majority_frame(records)
        if found is not None:
            (prefix, suffix), records = found
            prompt_format, source = prefix + QUESTION + suffix, "corpus"
    if prompt_format is not None:
        for record in records:
            prompt = record.prompt or ""
            if (
                prompt.startswith(prefix)
                and prompt.endswith(suffix)
                and len(prompt) > len(prefix) + len(suffix)
            ):
                example = (
                    prompt[len(prefix) : len(prompt) - len(suffix)].strip()[:_MAX_EXAMPLE_CHARS]
                    or None
                )
                break
        responses = [r.response.strip() for r in records if r.response]
        if responses and not any("\n" in r for r in responses):
            stop = ["\n"]
    elif chat:
        for record in store.first_of_kind("messages", 16):
            user = next(
                (m.get("content") for m in record.messages or [] if m.get("role") == "user"), None
            )
            if user and user.strip():
                example = user.strip()[:_MAX_EXAMPLE_CHARS]
                break
    mode = "format" if prompt_format is not None else "chat" if chat else "plain"
    info = types.PromptingInfo(
        mode=mode,  # type: ignore[arg-type]
        chat_template=chat,
        prompt_format=prompt_format,
        format_source=source,  # type: ignore[arg-type]
        example_question=example,
        stop=stop,
    )
    logger.info(
        "prompting: %s%s", mode, f" ({prompt_format!r}, from the {source})" if prompt_format else ""
    )
    return info
