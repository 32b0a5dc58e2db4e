"""Synthetic index vectors with a real index's spectrum, and exact streamed top-k.

:class:`SpectrumSampler` fits the mean and the covariance eigen-decomposition of a sample of
real stored vectors, ``C = V diag(λ) Vᵀ``, and draws ``x = μ + z · diag(√λ) · Vᵀ`` with ``z``
standard Gaussian: the draws have the sample's mean and covariance (so its spectrum, not
isotropic noise's), in chunks of any size. A covariance estimated from ``n`` rows has at most
``n - 1`` non-zero eigenvalues, so the draws span at most that many directions.

:class:`StreamedTopK` keeps the exact top-``k`` inner products of a few queries over vectors
streamed chunk by chunk, in float64: each chunk's scores are merged with the running best and
cut back to ``k`` (ties: the lower id first), so the result is the brute-force top-``k``.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def random_projection(dim_in: int, dim_out: int, seed: int = 0) -> np.ndarray:
    """``[dim_in, dim_out]`` Gaussian map scaled by ``1/√dim_out`` (inner products kept in
    expectation), to simulate a smaller dimension than the real index's."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((dim_in, dim_out)) / np.sqrt(dim_out)


class SpectrumSampler:
    """Draws vectors with the mean and covariance of ``sample`` ``[n, D]`` (module docstring)."""

    def __init__(self, sample: np.ndarray, rtol: float = 1e-10):
        x = np.asarray(sample, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"the sample must be [n >= 2, D] vectors; got {list(x.shape)}")
        self.mean = x.mean(0)
        _, s, vt = np.linalg.svd((x - self.mean) / np.sqrt(x.shape[0] - 1), full_matrices=False)
        eig = s**2
        keep = eig > rtol * max(float(eig[0]), np.finfo(np.float64).tiny)
        self.eigenvalues = eig[keep]
        """``[r]`` the covariance's non-zero eigenvalues, largest first."""
        self.components = vt[keep]
        """``[r, D]`` their eigenvectors (rows)."""
        self._basis = (np.sqrt(self.eigenvalues)[:, None] * self.components).astype(np.float32)
        self._mean32 = self.mean.astype(np.float32)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def rank(self) -> int:
        return int(self.eigenvalues.shape[0])

    def draw(self, rows: int, rng: np.random.Generator) -> np.ndarray:
        """``[rows, D]`` float32 draws."""
        z = rng.standard_normal((rows, self.rank), dtype=np.float32)
        return z @ self._basis + self._mean32

    def describe(self) -> dict[str, float]:
        """The spectrum in a few numbers: rank, share of the variance in the top 1/10/100
        directions, effective rank ``(Σλ)² / Σλ²``, squared mean norm vs trace."""
        eig = self.eigenvalues
        total = float(eig.sum())
        out = {"rank": float(self.rank), "trace": total}
        for top in (1, 10, 100):
            out[f"variance_top{top}"] = float(eig[:top].sum() / total)
        out["effective_rank"] = float(total**2 / float((eig**2).sum()))
        out["mean_norm2_over_trace"] = float(self.mean @ self.mean / total)
        return out


class StreamedTopK:
    """Exact top-``k`` inner products of ``queries`` ``[Q, D]`` over streamed chunks."""

    def __init__(self, queries: np.ndarray, k: int):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.queries = np.asarray(queries, dtype=np.float64)
        self.k = k
        n_q = self.queries.shape[0]
        self.scores = np.full((n_q, 0), -np.inf)
        self.ids = np.zeros((n_q, 0), dtype=np.int64)

    def add(self, chunk: np.ndarray, id_start: int) -> None:
        """Merge ``chunk`` ``[rows, D]`` (ids ``id_start..``) into the running top-``k``."""
        scores = self.queries @ np.asarray(chunk, dtype=np.float64).T  # [Q, rows]
        ids = np.arange(id_start, id_start + chunk.shape[0], dtype=np.int64)
        all_scores = np.concatenate([self.scores, scores], axis=1)
        all_ids = np.concatenate([self.ids, np.broadcast_to(ids, scores.shape)], axis=1)
        keep = self._top(all_scores, all_ids)
        self.scores = np.take_along_axis(all_scores, keep, axis=1)
        self.ids = np.take_along_axis(all_ids, keep, axis=1)

    def _top(self, scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Columns of each row's top ``k``, best first (ties: the lower id first): every column
        at least as large as the ``k``-th largest score, sorted."""
        k = min(self.k, scores.shape[1])
        out = np.empty((scores.shape[0], k), dtype=np.int64)
        for q in range(scores.shape[0]):
            kth = np.partition(scores[q], scores.shape[1] - k)[scores.shape[1] - k]
            cand = np.flatnonzero(scores[q] >= kth)
            out[q] = cand[np.lexsort((ids[q, cand], -scores[q, cand]))[:k]]
        return out

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [Q, k], ids [Q, k])``, best first."""
        return self.scores.copy(), self.ids.copy()
