"""Live servers for the reliability tests: the service tests' index, with and without API keys."""

from __future__ import annotations

import pytest

from benchmarks.reliability import KEYS, serve
from tests.service.conftest import built_index, client, make_settings  # noqa: F401  (shared fixtures)


@pytest.fixture(scope="session")
def keyed_server(built_index, tmp_path_factory):  # noqa: F811
    """``tributary serve`` with two API keys (tenants) and generation on."""
    index, model = built_index
    with serve(index, model, tmp_path_factory.mktemp("keyed") / "state", KEYS) as server:
        yield server


@pytest.fixture(scope="session")
def open_server(built_index, tmp_path_factory):  # noqa: F811
    """``tributary serve`` without keys, generation on."""
    index, model = built_index
    with serve(index, model, tmp_path_factory.mktemp("open") / "state") as server:
        yield server


@pytest.fixture(scope="session")
def small_server(built_index, tmp_path_factory):  # noqa: F811
    """A server with small limits: 16 connections, 2 s for headers, 1 s body pauses, a queue of
    2."""
    index, model = built_index
    with serve(
        index,
        model,
        tmp_path_factory.mktemp("small") / "state",
        TRIBUTARY_MAX_CONNECTIONS="16",
        TRIBUTARY_HEADER_TIMEOUT_S="2",
        TRIBUTARY_BODY_TIMEOUT_S="1",
        TRIBUTARY_QUEUE_SIZE="2",
        TRIBUTARY_MAX_NEW_TOKENS="64",
    ) as server:
        yield server
