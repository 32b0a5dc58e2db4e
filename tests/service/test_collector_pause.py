"""The collector pause of a batch intake: counted across threads, restored on errors."""

from __future__ import annotations

import gc
import threading

import pytest
from tributary_service.collector_pause import paused_collection


@pytest.fixture(autouse=True)
def _collector_on():
    gc.enable()
    yield
    gc.enable()


def test_pauses_and_resumes():
    with paused_collection():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_resumes_after_an_error():
    with pytest.raises(ValueError), paused_collection():
        raise ValueError("bad batch line")
    assert gc.isenabled()


def test_concurrent_intakes_resume_only_when_the_last_ends():
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> None:
        with paused_collection():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with paused_collection():
            second_in.set()
            first_out.wait(5)
            seen["while the second still holds it"] = gc.isenabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"while the second still holds it": False}
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    with paused_collection():
        pass
    assert not gc.isenabled()
