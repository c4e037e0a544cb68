"""CFM span helpers: the clamped geometric span-length tables and a uniform random placement
(DESIGN §6). Pure numpy, used by `musicoder.model.masking` to draw masks in loader workers.
"""

from __future__ import annotations

import bisect
import functools

import numpy as np


def span_pmf(span_p: float, span_min: int, span_max: int) -> dict[int, float]:
    """P(L = l) for the clamped span length: Geometric(span_p) on {1, 2, ...} clamped into
    [span_min, span_max]."""
    pmf = dict.fromkeys(range(span_min, span_max + 1), 0.0)
    for k in range(1, span_max):
        pmf[max(k, span_min)] += (1 - span_p) ** (k - 1) * span_p
    pmf[span_max] += (1 - span_p) ** (span_max - 1)
    return pmf


@functools.lru_cache(maxsize=16)
def span_tables(
    span_p: float, span_min: int, span_max: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read-only tables cached per parameter set and size: `cdf` = P(L <= l) for l in
    [span_min, span_max) (L = span_min + #(cdf <= u), u ~ U[0, 1)); per budget 0..size-1, an
    integer threshold `lo` and the probability `p_hi` of using `lo + 1`, chosen so that the
    expected masked total equals the budget exactly.

    With threshold x, spans are drawn until their sum first reaches x (x = 0: no span). Its
    expected sum obeys g(0) = 0, g(x) = E[L] + sum_{l < x} P(L = l) g(x - l), which increases
    by about one per step (g(x) ~ x + 2.09 with the defaults); mixing the two thresholds around
    a budget hits it on average.
    """
    pmf = span_pmf(span_p, span_min, span_max)
    mean = sum(length * q for length, q in pmf.items())
    g = [0.0]
    for x in range(1, size + 2):
        g.append(mean + sum(q * g[x - length] for length, q in pmf.items() if length < x))
    lo = np.array([bisect.bisect_right(g, budget) - 1 for budget in range(size)])
    p_hi = np.array([(budget - g[x]) / (g[x + 1] - g[x]) for budget, x in enumerate(lo)])
    cdf = np.cumsum(list(pmf.values()))[:-1]
    cdf.flags.writeable = lo.flags.writeable = p_hi.flags.writeable = False
    return cdf, lo, p_hi


def first_distinct(
    size: np.ndarray, k: np.ndarray, columns: int, rng: np.random.Generator
) -> np.ndarray:
    """A uniform k[i]-subset of {0..size[i]-1} per row (k <= size, k <= columns), ascending
    in the first k[i] of `columns` columns, the rest padded with a larger value.

    The first k distinct values of an iid uniform sequence are a uniform k-subset (relabelling
    the values maps sequences to equally likely ones): O(k) work per row, where the top-k of
    random keys over all positions costs ~100 us per 16 x 513 (numpy or torch, data-dependent
    branches). Draws double until every row has k distinct values (dense layouts only).
    """
    b, width, pad = len(k), max(2 * int(k.max()), columns), int(size.max())
    while True:
        x = (rng.random((b, width)) * size[:, None]).astype(np.int64)  # u < 1: x < size
        flat = (np.arange(b)[:, None] * pad + x).ravel()  # (B * W,) distinct across rows
        order = np.argsort(flat, kind="stable")  # by row and value, then column
        seen = flat[order]
        new = np.ones(b * width, dtype=bool)  # first occurrence of its value in its row
        new[order[1:][seen[1:] == seen[:-1]]] = False
        new = new.reshape(b, width)
        rank = new.cumsum(axis=1)
        if (rank[:, -1] >= k).all():
            return np.sort(np.where(new & (rank <= k[:, None]), x, pad), axis=1)[:, :columns]
        width *= 2
