"""Progress bars for long work (tqdm), switchable off; a no-op object when disabled."""

from __future__ import annotations

from typing import Any


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, total: int | None = None, **kwargs: Any) -> Any:
    """A ``tqdm`` bar (to stderr, with rate and ETA) or a silent stand-in."""
    if not enabled:
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, dynamic_ncols=True, smoothing=0.1, **kwargs)
