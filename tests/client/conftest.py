"""Fixtures of the client tests (the fake API itself lives in client_fakes.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # client_fakes, whatever pytest's import mode
try:  # installed (editable) or PYTHONPATH=client; otherwise use the checkout
    import tributary_client  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(HERE.parents[1] / "client"))

from client_fakes import BASE_URL, FakeTributary  # noqa: E402
from tributary_client import AsyncClient, Client  # noqa: E402


@pytest.fixture
def fake() -> FakeTributary:
    return FakeTributary()


@pytest.fixture
def delays() -> list[float]:
    return []


@pytest.fixture
def client(fake: FakeTributary, delays: list[float]) -> Client:
    c = Client(BASE_URL, api_key="sk-test", transport=httpx.MockTransport(fake))
    c._sleep = delays.append  # type: ignore[method-assign]  # record, don't sleep
    return c


@pytest.fixture
def make_async_client(fake: FakeTributary, delays: list[float]) -> Callable[..., AsyncClient]:
    def make(**kwargs: Any) -> AsyncClient:
        c = AsyncClient(BASE_URL, api_key="sk-test", transport=httpx.MockTransport(fake), **kwargs)

        async def record(seconds: float) -> None:
            delays.append(seconds)

        c._sleep = record  # type: ignore[method-assign]
        return c

    return make
