"""Gates are data plus one pure function; a failed gate is a Decision with reasons. Rates are decided
by an exact test on their counts, and a set smaller than the policy's minimum is not decided."""

import pytest

from unlearning.evaluation.gates import DEFAULT_POLICY, Policy, PolicyError, Threshold, decide, load_policy


def rate(k, n, name="ua"):
    return {name: k / n, "k": k, "n": n, "wilson": [0.0, 1.0], "bootstrap": [0.0, 1.0]}


def results(**overrides):
    erased = {"ua": 0.98, "k": 59, "n": 60, "where_base_draws": rate(58, 58)}
    base = {
        "forget": {"gate": dict(erased), "heldout": dict(erased), "synonyms": dict(erased)},
        "retain": {
            "ira": {"relative": 0.99, "n": 168},
            "cra": {"relative": 0.99, "n": 144},
            "by_domain": {"object": {"relative": 0.99, "n": 168}, "style": {"relative": 0.99, "n": 144}},
            "per_concept": {"square": {"relative": 1.0, "n": 24}, "ring": {"relative": 0.96, "n": 24}},
        },
        "retention": {"distance": 0.05, "n": 312},
        "fid": {"fid": 0.2, "n": 312},
        "alignment": {"relative": 0.99},
        "judges": {"candidate": {"forget_disagreement": 0.02, "n": 180}},
    }
    for path, value in overrides.items():
        node = base
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return base


def test_the_shipped_policy_loads_and_passes_good_results():
    policy = load_policy(DEFAULT_POLICY)
    assert policy.alpha == 0.05
    assert policy.thresholds and all(t.min is not None or t.max is not None for t in policy.thresholds)
    decision = decide(results(), policy)
    assert decision.passed, decision.reasons


def test_each_failure_is_a_reason_not_an_exception():
    policy = load_policy()
    decision = decide(
        results(forget__gate__where_base_draws=rate(20, 58), retain__per_concept__ring__relative=0.4), policy
    )
    assert not decision.passed
    assert any(r.startswith("forget.gate.where_base_draws = 20/58") and "not evidence" in r for r in decision.reasons)
    assert any(r.startswith("retain.per_concept.ring.relative = 0.400 <") for r in decision.reasons)
    assert len(decision.reasons) == 2


def test_a_rate_passes_only_with_evidence_exact_binomial():
    """H0: UA <= 0.85, alpha 0.05, n = 60. P(X >= 56 | 0.85) = 0.0424 <= 0.05 (pass) but
    P(X >= 55 | 0.85) = 0.0968 > 0.05: 55 of 60 (0.917, above the bar) is not yet evidence."""
    policy = Policy("p", (Threshold("r", min=0.85, test="binomial"),))
    assert decide({"r": rate(56, 60)}, policy).passed
    refused = decide({"r": rate(55, 60)}, policy)
    assert not refused.passed and "p = 0.097" in refused.reasons[0] and "passing needs 56/60" in refused.reasons[0]
    assert not decide({"r": rate(6, 6)}, policy).passed  # 6 of 6: P(X >= 6 | 0.85) = 0.377, no evidence at all


def test_too_few_images_is_a_refusal_to_decide():
    policy = Policy(
        "p",
        (
            Threshold("forget.gate.where_base_draws", min=0.85, test="binomial", min_n=50),
            Threshold("retain.ira.relative", min=0.9, min_n=100),
        ),
    )
    decision = decide(
        {"forget": {"gate": {"where_base_draws": rate(6, 6)}}, "retain": {"ira": {"relative": 1.0, "n": 36}}}, policy
    )
    assert not decision.passed and len(decision.reasons) == 2
    assert all("the policy needs at least" in r for r in decision.reasons)
    assert [c.n for c in decision.checks] == [6, 36]


def test_missing_metrics_fail_unless_optional():
    policy = Policy("p", (Threshold("rebound.*.ua", min=0.85, optional=True), Threshold("forget.gate.ua", min=0.9)))
    decision = decide({}, policy)
    assert decision.reasons == ["forget.gate.ua: not measured"]
    assert decide({"rebound": {"star": {"ua": 0.2}}, "forget": {"gate": {"ua": 1.0}}}, policy).reasons == [
        "rebound.star.ua = 0.200 < 0.85"
    ]


def test_nan_fails():
    decision = decide({"x": float("nan")}, Policy("p", (Threshold("x", max=1.0),)))
    assert not decision.passed and decision.reasons == ["x: not a number"]


def test_decide_is_pure():
    policy = load_policy()
    r = results(fid__fid=9.0)
    assert decide(r, policy) == decide(r, policy)
    assert r["fid"]["fid"] == 9.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("thresholds: [unclosed", "malformed YAML"),
        ("name: x\n", "'thresholds' list"),
        ("thresholds:\n  - metric: a.b\n", "needs 'min' or 'max'"),
        ("thresholds:\n  - {metric: a, min: high}\n", "'min' must be a number"),
        ("thresholds:\n  - {metric: a, min: 1, colour: red}\n", "unknown key"),
        ("thresholds:\n  - {metric: a, min: 1.5, test: binomial}\n", "0 < min < 1"),
        ("thresholds:\n  - {metric: a, min: 0.5, test: t}\n", "'test' must be"),
        ("thresholds:\n  - {metric: a, min: 0.5, min_n: 0}\n", "'min_n'"),
        ("alpha: 2\nthresholds:\n  - {metric: a, min: 0.5}\n", "alpha"),
    ],
)
def test_malformed_policies_are_refused_with_the_problem(tmp_path, text, message):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=message):
        load_policy(path)
