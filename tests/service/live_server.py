"""Start a real ``tributary serve`` (uvicorn) process on 127.0.0.1 for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT / p) for p in ("indexer", "service", "client")] + [str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


@contextmanager
def running_server(
    cmd: list[str], env: dict[str, str], log: Path, base: str, timeout: float = 90.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` (a server answering ``base``) with its output in ``log``; yield the process once
    ``/readyz`` answers 200; stop its process group (SIGTERM, then SIGKILL) afterwards."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {proc.returncode}: {log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(base + "/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"server not ready after {timeout}s: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def server_command(index: Path, model: Path, port: int, *args: str) -> list[str]:
    """``tributary serve`` of ``index`` and ``model`` on loopback ``port`` (warnings only)."""
    return [
        sys.executable,
        "-m",
        "tributary_service.cli",
        "--index",
        str(index),
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *args,
    ]


@contextmanager
def live_server(
    index: Path, model: Path, state_dir: Path, *args: str, timeout: float = 90.0, **env: str
) -> Iterator[str]:
    """Yield the base URL of a running server; stop it (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    cmd = server_command(index, model, port, *args)
    env = {"TRIBUTARY_NUM_THREADS": "1", **env}  # the tests' clients share the 2 cores
    base = f"http://127.0.0.1:{port}"
    log = state_dir.parent / f"server-{port}.log"
    with running_server(
        cmd, server_env(TRIBUTARY_STATE_DIR=str(state_dir), **env), log, base, timeout
    ):
        yield base
