import pytest

from unlearning.shapes.plan import shapes_plan
from unlearning.shapes.vocabulary import HELDOUT_TEMPLATES, OBJECTS, STYLES


def test_plan_covers_target_rebound_and_both_retain_domains():
    plan = shapes_plan("circle", synonyms=("disc",), erased=("striped",), samples=3)
    groups = plan.groups()
    assert {"forget/gate", "forget/heldout", "forget/synonyms", "rebound/striped"} <= set(groups)
    assert {g for g in groups if g.startswith("retain/in/")} == {f"retain/in/{o}" for o in OBJECTS if o != "circle"}
    assert {g for g in groups if g.startswith("retain/cross/")} == {
        f"retain/cross/{s}" for s in STYLES if s != "striped"
    }
    assert all(len(indices) == 3 for indices in groups.values())
    assert len({c.seed for c in plan.cases}) == len(plan.cases)
    assert all("disc" in plan.cases[i].prompt for i in groups["forget/synonyms"])


def test_retain_prompts_never_ask_for_erased_or_target_concepts():
    plan = shapes_plan("circle", erased=("striped", "star"), samples=4)
    for case in plan.cases:
        if case.group.startswith("retain/"):
            named = dict(case.attributes)
            assert named["object"] not in ("circle", "star") and named["style"] != "striped", case


def test_heldout_group_uses_only_heldout_templates():
    plan = shapes_plan("dotted", samples=2)
    starts = tuple(t.split("{")[0] for t in HELDOUT_TEMPLATES)
    assert all(plan.cases[i].prompt.startswith(starts) for i in plan.groups()["forget/heldout"])


def test_plans_are_deterministic():
    assert shapes_plan("star", samples=2) == shapes_plan("star", samples=2)


@pytest.mark.parametrize(
    "kwargs", [{"target": "teapot"}, {"target": "star", "erased": ("star",)}, {"target": "star", "samples": 0}]
)
def test_bad_plans_are_refused(kwargs):
    with pytest.raises(ValueError):
        shapes_plan(**kwargs)
