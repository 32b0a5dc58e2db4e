"""Named places where a test can kill a build or a compaction uncleanly (crash-safety tests)."""

from __future__ import annotations

import logging
import os
import signal

logger = logging.getLogger(__name__)

__all__ = ["crash_point"]


def crash_point(name: str) -> None:
    """Test hook: ``TRIBUTARY_CRASH_AT=name`` SIGKILLs this process here (a real, unclean kill)."""
    if os.environ.get("TRIBUTARY_CRASH_AT") == name:
        logger.warning("TRIBUTARY_CRASH_AT=%s: killing this process", name)
        os.kill(os.getpid(), signal.SIGKILL)
