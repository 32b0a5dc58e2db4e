"""The SDK must stay light: importing it loads no ML or server framework."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import tributary_client

HEAVY = [
    "torch",
    "faiss",
    "transformers",
    "fastapi",
    "starlette",
    "uvicorn",
    "numpy",
    "tributary_indexer",
    "tributary_service",
]

CODE = """
import json, sys
import tributary_client, tributary_client.cli, tributary_client.types
import tributary_client.batch_runner, tributary_client.report, tributary_client.logs
client = tributary_client.Client("http://127.0.0.1:1")
client.close()
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_import_loads_nothing_heavy() -> None:
    client_dir = str(Path(tributary_client.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (client_dir, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", CODE],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert "tributary_client" in loaded and "httpx" in loaded
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
