"""Pause Python's cyclic garbage collector while a worker thread builds many short-lived objects.

Taking in a large batch makes hundreds of thousands of objects (request models, their dicts,
the rows for SQLite) that all survive until the batch is stored. Each automatic collection of
the oldest generation walks every one of them while holding the interpreter lock, which stalls
the event loop (a ``/healthz`` poll) for tens of milliseconds at a time. None of these objects
form reference cycles, so reference counting frees them the moment the intake returns and the
collector has nothing to find: it is paused for the intake and resumed after it.

The pause is process-wide (the collector has one switch), so it is counted: collection resumes
when the last of several concurrent intakes ends, and never if it was off before the first.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0
_was_enabled = False


@contextmanager
def paused_collection() -> Iterator[None]:
    """Within the block, no automatic cyclic collection runs (reference counting still frees)."""
    global _holders, _was_enabled
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _was_enabled:
                gc.enable()
