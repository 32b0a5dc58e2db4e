"""Backdoor retrieval (RapidIn's protocol): AUPRC and recall@k of the poisoned training documents
for trigger prompts answered with the backdoor reply, on the demo corpus and model.

    .venv/bin/python -m benchmarks.quality.backdoor [--quick] [--refresh] [--no-write]
"""

from __future__ import annotations

from .retrieval import main

if __name__ == "__main__":
    main("backdoor")
