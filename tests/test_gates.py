"""Gates are data plus one pure function; a failed gate is a Decision with reasons. Rates are decided
by an exact test on their counts, and a set smaller than the policy's minimum is not decided."""

import pytest

from pipeline.evaluator import Evaluator
from pipeline.settings import LetheSettings
from unlearning.evaluation.gates import (
    DEFAULT_POLICY,
    OPEN_POLICY,
    Policy,
    PolicyError,
    Threshold,
    decide,
    default_policy,
    load_policy,
    lower_bound,
)


def rate(k, n, name="ua"):
    return {name: k / n, "k": k, "n": n, "wilson": [0.0, 1.0], "bootstrap": [0.0, 1.0]}


# Where a rule's path has `*`, the results name two members, as an evaluation with an earlier request has.
MEMBERS = {"rebound": ("star", "striped"), "sweep.concepts": ("circle", "star"), "attack": ("circle", "star")}
MEMBERS_OTHERWISE = ("square", "ring")


def good_value(threshold: Threshold, n: int):
    """A value that passes `threshold` with room to spare, derived from the rule itself (not hand-picked
    inside today's bounds): a binomial rate of n/n, else halfway between the bound and the far end
    (1 for a min of a relative score; 0 for a max)."""
    if threshold.test == "binomial":
        return rate(n, n, name=threshold.metric.rsplit(".", 1)[-1])
    if threshold.min is not None and threshold.max is not None:
        return (threshold.min + threshold.max) / 2
    if threshold.min is not None:
        return threshold.min + (max(1.0, threshold.min) - threshold.min) / 2 + 0.01
    return threshold.max / 2


def results(policy: Policy | None = None, **overrides):
    """Results that pass every rule of `policy` (the shipped one by default); `a__b__c=value` overrides."""
    policy = policy or load_policy(DEFAULT_POLICY)
    base: dict = {}
    for threshold in policy.thresholds:
        n = max(threshold.min_n or 0, 100)
        parts = threshold.metric.split(".")
        paths = [parts]
        if "*" in parts:
            star = parts.index("*")
            members = MEMBERS.get(".".join(parts[:star]), MEMBERS_OTHERWISE)
            paths = [parts[:star] + [member] + parts[star + 1 :] for member in members]
        for path in paths:
            node = base
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = good_value(threshold, n)
            node.setdefault("n", n)
    for path, value in overrides.items():
        node = base
        *parents, leaf = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return base


SHIPPED = (DEFAULT_POLICY, OPEN_POLICY)  # the shapes world's and the open world's


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_the_shipped_policy_loads_and_passes_good_results(path):
    policy = load_policy(path)
    assert policy.alpha == 0.05
    assert policy.thresholds and all(t.min is not None or t.max is not None for t in policy.thresholds)
    decision = decide(results(policy), policy)
    assert decision.passed, decision.reasons


@pytest.mark.parametrize(
    "path, threshold",
    [(path, t) for path in SHIPPED for t in load_policy(path).thresholds],
    ids=lambda x: getattr(x, "metric", getattr(x, "stem", "")),
)
def test_each_shipped_rule_fails_just_beyond_its_bound(path, threshold):
    """Every rule of each shipped policy can fail: its metric just past the bound, all else good, gives
    exactly one reason, and it names that metric."""
    policy = load_policy(path)
    path = threshold.metric.replace("*", MEMBERS.get(threshold.metric.split(".*")[0], MEMBERS_OTHERWISE)[0])
    n = max(threshold.min_n or 0, 100)
    if threshold.test == "binomial":
        bad = rate(int(threshold.min * n), n, name=path.rsplit(".", 1)[-1])
    elif threshold.min is not None:
        bad = threshold.min - 0.001
    else:
        bad = threshold.max + 0.001
    decision = decide(results(policy, **{path.replace(".", "__"): bad}), policy)
    assert not decision.passed and len(decision.reasons) == 1
    assert decision.reasons[0].startswith(path), decision.reasons


DISAGREEMENT = "judges.candidate.forget_disagreement"  # needs two judges


@pytest.mark.parametrize(
    "world, expected",
    [("shapes", DEFAULT_POLICY), ("open", OPEN_POLICY)],
)
def test_each_world_is_gated_by_its_own_policy_unless_one_is_set(tmp_path, monkeypatch, world, expected):
    """With no `policy` set, the open world's evaluations use the open policy (calibrated on its CLIP judge)
    and the shapes world's the shapes policy; a set policy wins in either world."""
    monkeypatch.chdir(tmp_path)
    settings = LetheSettings(world=world, home=tmp_path, judge_model="/nowhere")  # the judge loads only to judge
    evaluator = Evaluator.from_settings(settings)
    assert evaluator.world.name == world and default_policy(world) == expected
    assert evaluator.policy == load_policy(expected)
    set_policy = tmp_path / "mine.yaml"
    set_policy.write_text("name: mine\nthresholds:\n  - {metric: fid.fid, max: 1.0}\n")
    assert Evaluator.from_settings(settings.model_copy(update={"policy": str(set_policy)})).policy.name == "mine"


def test_the_open_policy_is_the_shapes_policy_less_the_two_judge_rule():
    """The open world has one judge: its policy has every rule of the shapes policy but the judges'
    disagreement, with the same alpha, the same gate sizes (min_n), and the same uncalibrated bounds (the
    issue's forget bound, no relocation, the attack's ASR, alignment); only the calibrated bounds differ."""
    shapes, open_ = load_policy(DEFAULT_POLICY), load_policy(OPEN_POLICY)
    assert open_.name != shapes.name and open_.alpha == shapes.alpha
    assert DISAGREEMENT in [t.metric for t in shapes.thresholds]
    assert [t.metric for t in open_.thresholds] == [t.metric for t in shapes.thresholds if t.metric != DISAGREEMENT]
    by_metric = {t.metric: t for t in shapes.thresholds}
    for rule in open_.thresholds:
        theirs = by_metric[rule.metric]
        assert (rule.min_n, rule.test, rule.optional) == (theirs.min_n, theirs.test, theirs.optional), rule.metric
        assert (rule.min is None, rule.max is None) == (theirs.min is None, theirs.max is None), rule.metric
        if rule.test == "binomial" or rule.metric in (
            "sweep.concepts.*.relocations",
            "attack.*.asr",
            "alignment.relative",
        ):
            assert (rule.min, rule.max) == (theirs.min, theirs.max), rule.metric


def test_the_bound_a_two_stage_rule_screens_against_is_the_policys_strictest_min_for_that_metric():
    """`*` in a rule matches any one key; a rule naming the concept itself counts too, and the strictest
    (largest) min wins; a max, another metric or a longer path bounds nothing here."""
    assert lower_bound(load_policy(DEFAULT_POLICY), "retain.per_concept.square.relative") == 0.934
    assert lower_bound(load_policy(OPEN_POLICY), "retain.per_concept.dotted.relative") == 0.427
    assert lower_bound(load_policy(DEFAULT_POLICY), "retain.per_concept.square.accuracy") is None
    policy = Policy(
        "two",
        (
            Threshold("retain.per_concept.*.relative", min=0.9),
            Threshold("retain.per_concept.square.relative", min=0.95),
            Threshold("retain.per_concept.*.relative", max=1.5),
            Threshold("retain.per_concept.*.relative.n", min=0.99),
        ),
    )
    assert lower_bound(policy, "retain.per_concept.square.relative") == 0.95
    assert lower_bound(policy, "retain.per_concept.circle.relative") == 0.9


def test_a_world_without_a_shipped_policy_is_refused():
    with pytest.raises(PolicyError, match="no gate policy is shipped for the 'moon' world"):
        default_policy("moon")


def test_each_failure_is_a_reason_not_an_exception():
    policy = load_policy()
    decision = decide(
        results(policy, forget__gate__where_base_draws=rate(20, 58), retain__per_concept__square__relative=0.4),
        policy,
    )
    assert not decision.passed
    assert any(r.startswith("forget.gate.where_base_draws = 20/58") and "not evidence" in r for r in decision.reasons)
    assert any(r.startswith("retain.per_concept.square.relative = 0.400 <") for r in decision.reasons)
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
    r = results(policy, fid__fid=9.0)
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
