"""Gates are data plus one pure function; a failed gate is a Decision with reasons."""

import pytest

from unlearning.evaluation.gates import DEFAULT_POLICY, Policy, PolicyError, Threshold, decide, load_policy


def results(**overrides):
    base = {
        "forget": {"gate": {"ua": 0.95}, "heldout": {"ua": 0.9}, "synonyms": {"ua": 0.9}},
        "retain": {
            "ira": {"relative": 0.97},
            "cra": {"relative": 0.99},
            "per_concept": {"square": {"relative": 1.0}, "ring": {"relative": 0.95}},
        },
        "retention": {"distance": 0.05},
        "fid": {"fid": 0.2},
        "alignment": {"relative": 0.99},
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
    assert policy.thresholds and all(t.min is not None or t.max is not None for t in policy.thresholds)
    decision = decide(results(), policy)
    assert decision.passed and decision.reasons == []


def test_each_failure_is_a_reason_not_an_exception():
    policy = load_policy()
    decision = decide(results(forget__gate__ua=0.4, retain__per_concept__ring__relative=0.5), policy)
    assert not decision.passed
    assert any(r.startswith("forget.gate.ua = 0.400 < 0.9") for r in decision.reasons)
    assert any(r.startswith("retain.per_concept.ring.relative = 0.500 < 0.8") for r in decision.reasons)
    assert len(decision.reasons) == 2


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
    ],
)
def test_malformed_policies_are_refused_with_the_problem(tmp_path, text, message):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=message):
        load_policy(path)
