"""The demo: a synthetic corpus with known answers and a small model trained on it.

- :mod:`.corpus_generator` — a seeded, deterministic corpus of facts about fictional people,
  countries and inventions, distractors, generic instruction data and a small poisoned subset,
  with the ground truth (which documents state which fact, which are poisoned) beside it,
  written from the word lists of :mod:`.corpus_vocabulary`; :mod:`.ground_truth` reads and
  describes that ground truth;
- :mod:`.scaled_corpus` — the same kinds of records at any size, for the scale benchmarks;
- :mod:`.train_model` — a byte-level BPE tokenizer and a small GPT-2 trained on that corpus,
  saved in Hugging Face format.

The generated corpus and the trained checkpoint are committed under ``demo/`` at the
repository root (:func:`demo_root`), so the demo needs no training.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["demo_root"]


def demo_root() -> Path:
    """The repository's ``demo/`` folder (``corpus/``, ``model/``); a source checkout only.

    Raises :class:`FileNotFoundError` when the package is not run from a checkout.
    """
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "demo"
        if (candidate / "corpus" / "ground_truth.json").is_file():
            return candidate
    raise FileNotFoundError(
        "no demo/ folder with corpus/ground_truth.json above "
        f"{here}; the demo data lives in the source checkout (git clone the repository)"
    )
