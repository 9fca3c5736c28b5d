"""The statistics of the gate, checked against values derived by hand (or by exact enumeration)."""

import math

import numpy as np
import pytest

from unlearning.evaluation.stats import (
    binomial_upper_tail,
    cluster_bootstrap_interval,
    min_successes,
    passes_rate_test,
    rate,
    ratio_of_means,
    wilson_interval,
)


def test_wilson_interval_by_hand():
    """k = 5, n = 6, z = 1.96: centre = (5 + 1.9208)/(6 + 3.8415) = 0.7032; half = 1.96·√(5/6 + 0.9604)/9.8415
    = 1.96·1.3394/9.8415 = 0.2667: [0.4365, 0.9699] — the issue's [0.44, 0.97]."""
    low, high = wilson_interval(5, 6)
    assert low == pytest.approx(0.4365, abs=1e-3) and high == pytest.approx(0.9699, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_binomial_tail_by_hand():
    """P(X >= 2 | n = 3, p = 0.5) = (3 + 1)/8 = 0.5; P(X >= 3 | n = 3, p = 0.9) = 0.729."""
    assert binomial_upper_tail(2, 3, 0.5) == pytest.approx(0.5)
    assert binomial_upper_tail(3, 3, 0.9) == pytest.approx(0.729)
    assert binomial_upper_tail(0, 3, 0.1) == 1.0 and binomial_upper_tail(4, 3, 0.9) == 0.0


def test_sixty_images_decide_ua_above_0_85():
    """n = 60, H0 p <= 0.85 at alpha 0.05: pass at k >= 56 (a false pass 4.2 % at a true UA of 0.85, power
    82 % at 0.95). The issue's "55" gives a false pass 9.7 % of the time."""
    assert min_successes(60, 0.85) == 56
    assert binomial_upper_tail(56, 60, 0.85) == pytest.approx(0.0424, abs=1e-4)
    assert binomial_upper_tail(55, 60, 0.85) == pytest.approx(0.0968, abs=1e-4)
    assert binomial_upper_tail(56, 60, 0.95) == pytest.approx(0.8197, abs=1e-4)
    assert passes_rate_test(56, 60, 0.85) and not passes_rate_test(55, 60, 0.85)
    assert min_successes(6, 0.85) == 7  # six images can never pass


def test_cluster_bootstrap_resamples_whole_prompts():
    """Two prompts, one always right, one always wrong: every replicate mean is 0, 0.5 or 1, so the interval is
    inside [0, 1] and wide; one prompt only: no variation at all."""
    values = np.array([1, 1, 1, 0, 0, 0])
    clusters = np.array(["a", "a", "a", "b", "b", "b"])
    low, high = cluster_bootstrap_interval(values, clusters, seed=1)
    assert low == 0.0 and high == 1.0
    assert cluster_bootstrap_interval(np.ones(5), np.array(["a"] * 5)) == (1.0, 1.0)
    assert cluster_bootstrap_interval(values, clusters, seed=1) == cluster_bootstrap_interval(values, clusters, seed=1)


def test_paired_ratio_and_rate_record():
    assert ratio_of_means(np.array([1, 0]), np.array([1, 1])) == 0.5
    assert ratio_of_means(np.array([1, 0]), np.array([0, 0])) == 1.0  # the base never shows it: nothing erodes
    r = rate(np.array([1, 1, 0, 1]), np.array(["a", "a", "b", "b"]))
    assert (r["k"], r["n"], r["rate"], r["prompts"]) == (3, 4, 0.75, 2)
    assert len(r["wilson"]) == 2 and len(r["bootstrap"]) == 2
