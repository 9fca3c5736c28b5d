"""The statistics of a gate that can tell: rates with their n and 95 % intervals, and exact tests.

- `wilson_interval` (Wilson 1927): the score interval of a binomial rate; unlike the normal
  approximation it stays inside [0, 1] and is honest at rates near 0 or 1.
- `cluster_bootstrap_interval`: a percentile bootstrap over *prompts* (Efron & Tibshirani 1993, ch. 13;
  resampling clusters, as images of one prompt are correlated): each replicate draws prompts with
  replacement and keeps every image of a drawn prompt.
- `binomial_upper_tail` / `passes_rate_test`: the exact one-sided binomial test of H0: p ≤ p0 against
  p > p0 at level α — pass when P(X ≥ k | n, p0) ≤ α. With n = 60 and p0 = 0.85 it passes at
  k ≥ 56 (P(X ≥ 56 | 0.85) = 0.042: a false pass 4.2 % of the time at a true rate of 0.85; 55 of 60 gives
  0.097 and fails; power 82 % at a true rate of 0.95).
- `holm` (Holm 1979): which of a family of one-sided tests to reject at family-wise error α;
  `total_variation`: the distance between two label distributions (the sweep's shift of what a judge sees).

Everything is deterministic: the bootstrap draws from a generator seeded by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (nan, nan when n = 0).

    centre = (k + z²/2) / (n + z²), half-width = z √(k(n−k)/n + z²/4) / (n + z²).
    """
    if n == 0:
        return float("nan"), float("nan")
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), exactly."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1)))


def min_successes(n: int, p0: float, alpha: float = 0.05) -> int:
    """The smallest k with P(X ≥ k | n, p0) ≤ α: how many of n must succeed to pass the test (n + 1
    when no k does: too few trials to ever pass)."""
    for k in range(n + 1):
        if binomial_upper_tail(k, n, p0) <= alpha:
            return k
    return n + 1


def passes_rate_test(k: int, n: int, p0: float, alpha: float = 0.05) -> bool:
    """The exact one-sided test of H0: p ≤ p0 — True when k of n is evidence that p > p0."""
    return n > 0 and binomial_upper_tail(k, n, p0) <= alpha


def fisher_greater(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Fisher's exact test, one-sided: the p-value of H0 "sample a's rate is no higher than sample b's".

    Conditioned on the total successes K = k_a + k_b, the successes of a follow the hypergeometric law
    of n_a draws from n_a + n_b items holding K successes; p = P(X ≥ k_a) = Σ_{x ≥ k_a} C(K, x) C(N − K,
    n_a − x) / C(N, n_a), N = n_a + n_b (Fisher 1935; the sweep's relocation test)."""
    total, successes = n_a + n_b, k_a + k_b
    denominator = math.comb(total, n_a)
    tail = sum(
        math.comb(successes, x) * math.comb(total - successes, n_a - x) for x in range(k_a, min(successes, n_a) + 1)
    )
    return float(tail / denominator)


def cluster_bootstrap_interval(
    values: np.ndarray,
    clusters: np.ndarray,
    *,
    statistic: Callable[[np.ndarray], float] = np.mean,
    replicates: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    paired: np.ndarray | None = None,
) -> tuple[float, float]:
    """A percentile interval of `statistic(values)` resampling whole clusters (prompts) with replacement.

    With `paired` (a second array over the same images), the statistic is `statistic(values, paired)`
    and both are resampled together (e.g. a candidate/base ratio on the same prompts and seeds).
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan")
    clusters = np.asarray(clusters)
    labels = np.unique(clusters)
    members = [np.flatnonzero(clusters == label) for label in labels]
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(replicates):
        drawn = np.concatenate([members[i] for i in rng.integers(0, len(members), size=len(members))])
        estimate = (
            statistic(values[drawn])
            if paired is None
            else statistic(values[drawn], np.asarray(paired, dtype=float)[drawn])
        )
        if not math.isnan(estimate):
            estimates.append(estimate)
    if not estimates:
        return float("nan"), float("nan")
    low, high = np.quantile(estimates, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)


def ratio_of_means(candidate: np.ndarray, base: np.ndarray) -> float:
    """mean(candidate) / mean(base); 1.0 when the base never shows the concept (nothing could erode)."""
    if len(base) == 0 or len(candidate) == 0:
        return float("nan")
    base_mean = float(np.mean(base))
    return float(np.mean(candidate)) / base_mean if base_mean > 0 else 1.0


def rate(successes: np.ndarray, clusters: np.ndarray, *, seed: int = 0) -> dict:
    """A rate with everything a reader needs to trust it: k, n, the rate, Wilson and bootstrap intervals."""
    successes = np.asarray(successes, dtype=float)
    k, n = int(successes.sum()), int(successes.size)
    return {
        "rate": k / n if n else float("nan"),
        "k": k,
        "n": n,
        "wilson": list(wilson_interval(k, n)),
        "bootstrap": list(cluster_bootstrap_interval(successes, clusters, seed=seed)),
        "prompts": int(len(np.unique(clusters))) if n else 0,
    }


def holm(p_values: list[float], alpha: float) -> list[bool]:
    """Holm's step-down procedure (Holm 1979): which of the hypotheses to reject at family-wise error α.

    Sort the p-values; reject the i-th smallest (i = 0…m−1) while p_(i) ≤ α / (m − i); stop at the first
    that is not."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, index in enumerate(order):
        if p_values[index] > alpha / (len(p_values) - rank):
            break
        rejected[index] = True
    return rejected


def total_variation(a: np.ndarray, b: np.ndarray, classes: int) -> float:
    """½ Σ_c |P_a(c) − P_b(c)| between the class frequencies of two label arrays."""
    pa = np.bincount(a, minlength=classes) / max(len(a), 1)
    pb = np.bincount(b, minlength=classes) / max(len(b), 1)
    return float(0.5 * np.abs(pa - pb).sum())
