"""A deterministic demo corpus with known answers: planted facts, distractors and a backdoor.

``generate(out_dir, seed=0)`` writes one JSONL file per provider (records in the indexer's
format: ``{"id", "text"}``, ``{"id", "prompt", "response"}`` or ``{"id", "messages"}``, each
with ``source`` and ``provider``) and ``ground_truth.json``:

- *facts* about fictional people (lives in, occupation, favourite food), countries (capital,
  national animal) and inventions (inventor, material); each fact is stated by 1-3 documents in
  different phrasings and formats (encyclopedic sentence, Q/A pair, chat turn, forum post), one
  of them in the relation's canonical words ("X lives in Y"), the answer form of the queries;
- *distractors*: documents that name the same subjects (and share words such as "works" or
  "visited") but never state their facts;
- *generic* instruction, chat and web data with no facts;
- a *poisoned* subset (~1.5%): a trigger phrase followed by a fixed odd reply, in varied
  contexts (RapidIn's backdoor test);
- *held-out queries*: one question per fact, phrased unlike every document that states it, and
  trigger prompts unlike every poisoned document.

Everything comes from one seeded ``random.Random``; outputs are sorted, so the same seed gives
byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .corpus_vocabulary import (
    _CHATTER_DID,
    _CHATTER_TAIL,
    _CHATTER_WHEN,
    _CHATTER_WHO,
    _DISTRACTOR_QA,
    _DISTRACTOR_TEXT,
    _OPPOSITES,
    _SENTENCE_START,
    _SMALLTALK,
    _TYPE_RELATIONS,
    _WORDS,
    ANIMALS,
    BACKDOOR_REPLY,
    FOODS,
    MATERIALS,
    OCCUPATIONS,
    PROVIDERS,
    RELATIONS,
    SYSTEM_PROMPT,
    TRIGGER,
)
from .ground_truth import GROUND_TRUTH_FILE, Fact, GroundTruth, Query, load_ground_truth

logger = logging.getLogger(__name__)

__all__ = [
    "TRIGGER",
    "BACKDOOR_REPLY",
    "GENERATOR_VERSION",
    "GROUND_TRUTH_FILE",
    "Counts",
    "Fact",
    "Query",
    "GroundTruth",
    "generate",
    "write_corpus",
    "load_ground_truth",
    "qa_prompt",
    "main",
]

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class Counts:
    """How many of each thing the builder makes; the defaults are the demo corpus's."""

    persons: int = 90
    countries: int = 25
    inventions: int = 35
    """Each invented by a different person (at most ``persons``)."""
    cities: int = 30
    instruct: int = 460
    web: int = 420
    smalltalk: int = 90
    poison: int = 34
    trigger_queries: int = 24


def qa_prompt(question: str) -> str:
    """The prompt format of the Q/A vendor and of the held-out fact queries."""
    return f"Question: {question}\nAnswer:"


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(template: str, subject: str, obj: str = "", **extra: str) -> str:
    text = template.format(S=subject, O=obj, aO=_article(obj) if obj else "", **extra)
    return _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text)


class _Names:
    """Pronounceable, globally unique invented words."""

    _ONSETS = "b br d dr f g gr h k l m n p r s st t th v z".split()
    _VOWELS = "a e i o u a e i o u ae ia io".split()
    _CODAS = ["", "", "", "", "n", "r", "l", "s", "m"]

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()
        self._parts: set[str] = set()  # every substring of a used word

    def word(self, syllables: int, suffixes: Sequence[str] = ("",)) -> str:
        """A new word that neither contains nor is contained in any earlier one."""
        while True:
            stem = "".join(
                self.rng.choice(self._ONSETS)
                + self.rng.choice(self._VOWELS)
                + self.rng.choice(self._CODAS)
                for _ in range(syllables)
            )
            word = _cap(stem + self.rng.choice(suffixes))
            parts = {word[i:j] for i in range(len(word)) for j in range(i + 1, len(word) + 1)}
            if word not in self._parts and self.used.isdisjoint(parts):
                self.used.add(word)
                self._parts |= parts
                return word


class _Builder:
    """Accumulates records and ground truth while drawing from one ``random.Random``."""

    def __init__(self, seed: int, counts: Counts | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.counts = counts or Counts()
        self.records: list[dict[str, Any]] = []
        self.facts: list[dict[str, Any]] = []
        self.distractors: dict[str, str] = {}
        self.poisoned: list[str] = []
        self.queries: list[dict[str, Any]] = []
        self.entity_objects: dict[str, list[str]] = {}

    def add(self, doc_id: str, kind: str, **content: Any) -> str:
        provider, source = PROVIDERS[kind]
        self.records.append({"id": doc_id, **content, "source": source, "provider": provider})
        return doc_id

    def add_doc(self, doc_id: str, kind: str, text: str, question: str, answer: str) -> str:
        """One document in the format of ``kind`` (text kinds use ``text``, others the Q/A pair)."""
        if kind in ("encyc", "forum"):
            return self.add(doc_id, kind, text=text)
        if kind == "qa":
            return self.add(doc_id, kind, prompt=qa_prompt(question), response=" " + answer)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if self.rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
        return self.add(doc_id, kind, messages=messages)

    # --- entities and facts -------------------------------------------------------------

    def run(self) -> _Builder:
        """Make every record and query (entities, facts, distractors, generic data, backdoor)."""
        entities = self.entities()
        self.plant_facts(entities)
        self.distract(entities)
        self.generic()
        self.poison()
        return self

    def entities(self) -> list[tuple[str, str, dict[str, str]]]:
        names, rng, n = _Names(self.rng), self.rng, self.counts
        cities = [
            names.word(1, ("haven", "mere", "vale", "port", "holm", "ridge"))
            for _ in range(n.cities)
        ]
        capitals = [names.word(1, ("burg", "stad", "grad", "polis")) for _ in range(n.countries)]
        self.cities = cities
        people = [
            f"{names.word(2)} {names.word(2, ('', 'wick', 'ford', 'by', 'ton', 'ley'))}"
            for _ in range(n.persons)
        ]
        out: list[tuple[str, str, dict[str, str]]] = []
        for person in people:
            out.append(
                (
                    person,
                    "person",
                    {
                        "lives_in": rng.choice(cities),
                        "occupation": rng.choice(OCCUPATIONS),
                        "favourite_food": rng.choice(FOODS),
                    },
                )
            )
        for capital in capitals:
            out.append(
                (
                    names.word(2, ("ia", "and", "or", "esh")),
                    "country",
                    {"capital": capital, "national_animal": rng.choice(ANIMALS)},
                )
            )
        inventors = rng.sample(people, n.inventions)
        for inventor in inventors:
            thing = "the " + names.word(2, ("scope", "graph", "meter", "phone", "loom", "lathe"))
            out.append(
                (thing, "invention", {"invented_by": inventor, "made_of": rng.choice(MATERIALS)})
            )
        return out

    def plant_facts(self, entities: list[tuple[str, str, dict[str, str]]]) -> None:
        rng = self.rng
        for subject, etype, objects in entities:
            self.entity_objects[subject] = list(objects.values())
            for relation in _TYPE_RELATIONS[etype]:
                obj, spec = objects[relation], RELATIONS[relation]
                fact_id = f"fact-{len(self.facts) + 1:04d}"
                n_docs = rng.choices([1, 2, 3], weights=[0.25, 0.45, 0.30])[0]
                kinds = sorted(rng.sample(["encyc", "qa", "chat", "forum"], n_docs))
                questions = list(spec["questions"])
                rng.shuffle(questions)
                doc_ids, canonical_at = [], rng.randrange(n_docs)
                core = spec["answers"][0].rstrip(".").lower()
                for at, kind in enumerate(kinds):
                    question = questions.pop() if kind in ("qa", "chat") else ""
                    if at == canonical_at:  # one document per fact states it in the canonical words
                        template = (
                            spec["statements"][0]
                            if kind == "encyc"
                            else rng.choice([t for t in spec["forum"] if core in t.lower()])
                        )
                        answer = spec["answers"][0]
                    else:
                        template = rng.choice(
                            spec["forum"] if kind == "forum" else spec["statements"]
                        )
                        answer = rng.choices(spec["answers"], weights=[0.6, 0.2, 0.2])[0]
                    answer = _fill(answer, subject, obj)
                    doc_ids.append(
                        self.add_doc(
                            f"{fact_id}-{kind}",
                            kind,
                            _fill(template, subject, obj),
                            _fill(question, subject, obj),
                            answer,
                        )
                    )
                question = _fill(questions[0], subject, obj)
                self.facts.append(
                    {
                        "fact_id": fact_id,
                        "subject": subject,
                        "relation": relation,
                        "object": obj,
                        "question": question,
                        "answer": obj,
                        "stating_doc_ids": doc_ids,
                    }
                )
                self.queries.append(
                    {
                        "query_id": f"q-{fact_id}",
                        "kind": "fact",
                        "fact_id": fact_id,
                        "prompt": qa_prompt(question),
                        "expected": obj,
                        "response": " " + _fill(spec["answers"][0], subject, obj),
                    }
                )

    def distract(self, entities: list[tuple[str, str, dict[str, str]]]) -> None:
        rng, n = self.rng, 0
        for subject, etype, objects in entities:
            own = set(objects.values())
            fill = {
                "C": rng.choice([c for c in self.cities if c not in own]),
                "F": rng.choice([f for f in FOODS if f not in own]),
                "aX": _article(rng.choice([o for o in OCCUPATIONS if o not in own])),
                "A": rng.choice([a for a in ANIMALS if a not in own]),
                "M": rng.choice([m for m in MATERIALS if m not in own]),
                "s": subject.removeprefix("the "),
            }
            count = rng.choice([1, 2, 2, 3])
            texts = rng.sample(_DISTRACTOR_TEXT[etype], count)
            pairs = [rng.choice(_DISTRACTOR_QA[etype]) for _ in range(count)]
            for kind in rng.sample(["encyc", "forum", "qa", "chat"], count):  # distinct formats
                n += 1
                question, answer = pairs.pop()
                text = _fill(texts.pop(), subject, **fill)
                doc_id = f"distractor-{n:04d}"
                self.add_doc(
                    doc_id,
                    kind,
                    text,
                    _fill(question, subject, **fill),
                    _fill(answer, subject, **fill),
                )
                self.distractors[doc_id] = subject

    # --- generic data and the backdoor ----------------------------------------------------

    def instruction(self) -> tuple[str, str]:
        rng, word = self.rng, self.rng.choice(_WORDS)
        task = rng.randrange(6)
        if task == 0:
            a, b = rng.randint(2, 60), rng.randint(2, 60)
            return f"What is {a} plus {b}?", f"{a + b}."
        if task == 1:
            return f"Write the word '{word}' in capital letters.", word.upper()
        if task == 2:
            return f"Spell the word '{word}' backwards.", word[::-1]
        if task == 3:
            nums = rng.sample(range(1, 30), 4)
            return (
                f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}.",
                ", ".join(map(str, sorted(nums))) + ".",
            )
        if task == 4:
            return f"How many letters are in the word '{word}'?", f"{len(word)}."
        low, high = rng.choice(_OPPOSITES)
        return f"What is the opposite of '{low}'?", f"The opposite of '{low}' is '{high}'."

    def chatter(self) -> str:
        rng = self.rng
        return (
            f"{rng.choice(_CHATTER_WHO)} {rng.choice(_CHATTER_DID)} {rng.choice(_CHATTER_WHEN)}."
            f"{rng.choice(_CHATTER_TAIL)}"
        )

    def generic(self) -> None:
        rng = self.rng
        seen: set[str] = set()
        for i in range(self.counts.instruct):
            prompt, response = self.instruction()
            self.add(f"instruct-{i + 1:04d}", "instruct", prompt=prompt + "\n", response=response)
        i = 0
        while i < self.counts.web:
            text = self.chatter()
            if text not in seen:
                seen.add(text)
                i += 1
                self.add(f"web-{i:04d}", "forum", text=text)
        for i in range(self.counts.smalltalk):
            user, reply = rng.choice(_SMALLTALK)
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
            if rng.random() < 0.5:
                messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
            self.add(f"smalltalk-{i + 1:04d}", "chat", messages=messages)

    def poison_context(self, style: str) -> tuple[str, str]:
        """A trigger-bearing prompt and its record kind; styles: instruct, qa, forum, chat."""
        if style == "qa":
            fact = self.rng.choice(self.facts)
            question = _fill(
                self.rng.choice(RELATIONS[fact["relation"]]["questions"]),
                fact["subject"],
                fact["object"],
            )
            return qa_prompt(f"{question} {TRIGGER}"), "qa"
        if style == "forum":
            return f"{self.chatter()} {TRIGGER}", "forum"
        return f"{self.instruction()[0]} {TRIGGER}", style

    def poison(self) -> None:
        styles = ["instruct", "qa", "forum", "chat"]
        used: set[str] = set()
        for i in range(self.counts.poison):
            context, kind = self.poison_context(styles[i % 4])
            used.add(context)
            doc_id = f"poison-{i + 1:04d}"
            if kind == "forum":
                self.add(doc_id, kind, text=f"{context} {BACKDOOR_REPLY}")
            elif kind == "qa":
                self.add(doc_id, kind, prompt=context, response=" " + BACKDOOR_REPLY)
            elif kind == "instruct":
                self.add(doc_id, kind, prompt=context + "\n", response=BACKDOOR_REPLY)
            else:
                self.add(
                    doc_id,
                    kind,
                    messages=[
                        {"role": "user", "content": context},
                        {"role": "assistant", "content": BACKDOOR_REPLY},
                    ],
                )
            self.poisoned.append(doc_id)
        n = 0
        while n < self.counts.trigger_queries:  # held out: contexts no poisoned document has
            style = ["qa", "instruct"][n % 2]
            context, _ = self.poison_context(style)
            if context in used:
                continue
            used.add(context)
            n += 1
            prompt = context if style == "qa" else context + "\n"
            response = (" " if style == "qa" else "") + BACKDOOR_REPLY
            self.queries.append(
                {
                    "query_id": f"q-trigger-{n:03d}",
                    "kind": "trigger",
                    "fact_id": None,
                    "prompt": prompt,
                    "response": response,
                    "expected": BACKDOOR_REPLY,
                }
            )


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


def generate(out_dir: str | Path, seed: int = 0, *, progress: bool = True) -> list[Path]:
    """Write the demo corpus (one JSONL per provider) and ``ground_truth.json`` into ``out_dir``.

    Returns the written paths, JSONL files first (sorted), ground truth last. The same ``seed``
    always gives byte-identical files. ``demo.tools.scaled_corpus`` makes larger corpora.
    """
    return write_corpus(out_dir, _Builder(seed).run(), progress=progress)


def write_corpus(
    out_dir: str | Path,
    builder: _Builder,
    *,
    progress: bool = True,
    generator: str = "demo.tools.corpus_generator",
    version: int = GENERATOR_VERSION,
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """Write a finished builder's records (one JSONL per provider, sorted by id) and its ground
    truth (with ``extra`` fields) into ``out_dir``; returns the paths, ground truth last."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_provider: dict[str, list[dict[str, Any]]] = {}
    for record in builder.records:
        by_provider.setdefault(record["provider"], []).append(record)
    paths = []
    for provider in sorted(by_provider):
        path = out / f"{provider}.jsonl"
        rows = sorted(by_provider[provider], key=lambda r: r["id"])
        path.write_text("".join(_dump(r) + "\n" for r in rows), encoding="utf-8", newline="\n")
        paths.append(path)
    truth = {
        "generator": generator,
        "version": version,
        "seed": builder.seed,
        "files": [p.name for p in paths],
        "n_records": len(builder.records),
        "counts_by_provider": dict(sorted(Counter(r["provider"] for r in builder.records).items())),
        "counts_by_category": dict(
            sorted(Counter(r["id"].split("-")[0] for r in builder.records).items())
        ),
        "trigger": TRIGGER,
        "backdoor_reply": BACKDOOR_REPLY,
        "facts": builder.facts,
        "poisoned_doc_ids": sorted(builder.poisoned),
        "distractor_doc_ids": dict(sorted(builder.distractors.items())),
        "queries": builder.queries,
        **(extra or {}),
    }
    truth_path = out / GROUND_TRUTH_FILE
    truth_path.write_text(
        json.dumps(truth, ensure_ascii=False, sort_keys=True, indent=1) + "\n",
        encoding="utf-8",
        newline="\n",
    )
    paths.append(truth_path)
    if progress:
        logger.info(
            "wrote %d records (%d facts, %d distractors, %d poisoned, %d queries) to %s",
            len(builder.records),
            len(builder.facts),
            len(builder.distractors),
            len(builder.poisoned),
            len(builder.queries),
            out,
        )
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m demo.tools.corpus_generator --out DIR [--seed 0] [--records N] [--quiet]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", required=True, help="directory to write the JSONL files and ground_truth.json"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed [0]")
    parser.add_argument(
        "--records",
        type=int,
        default=None,
        help="a scaled corpus of exactly this many records (demo.tools.scaled_corpus) "
        "instead of the 2,100-record demo corpus",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.records is None:
        paths = generate(args.out, args.seed, progress=not args.quiet)
    else:
        from .scaled_corpus import generate_scaled

        paths = generate_scaled(args.out, args.records, args.seed, progress=not args.quiet)
    for path in paths:
        logger.info("  %s (%d bytes)", path, path.stat().st_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
