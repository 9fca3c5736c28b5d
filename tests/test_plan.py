"""The shapes world's evaluation plans: sets of phrasings x seeds, sized for a decision, stable across
requests so that the base's images come from the cache."""

import pytest

from unlearning.evaluation.plan import PlanSize
from unlearning.shapes.plan import PlanError, shapes_plan
from unlearning.shapes.prompts import ERASE_TEMPLATES, shapes_prompts
from unlearning.shapes.vocabulary import HELDOUT_TEMPLATES, OBJECTS, STYLES


def test_plan_covers_target_rebound_and_both_retain_domains_at_the_default_size():
    plan = shapes_plan("circle", synonyms=("disc",), erased=("striped",))
    groups = plan.groups()
    assert {"forget/gate", "forget/heldout", "forget/synonyms", "rebound/striped"} <= set(groups)
    assert {g for g in groups if g.startswith("retain/in/")} == {f"retain/in/{o}" for o in OBJECTS if o != "circle"}
    assert {g for g in groups if g.startswith("retain/cross/")} == {
        f"retain/cross/{s}" for s in STYLES if s != "striped"
    }
    for group, indices in groups.items():
        prompts = {plan.cases[i].prompt for i in indices}
        if group.startswith(("forget/", "rebound/")):
            assert len(indices) == 96 and len(prompts) == 32, group  # 32 phrasings x 3 seeds
        elif group.startswith("retain/in/"):  # 7 objects x 24 >= the head's 144
            assert len(indices) == 24 and len(prompts) == 8, group
        else:  # 5 styles left: 30 each (10 phrasings x 3 seeds), so the style head holds 150 >= 144
            assert len(indices) == 30 and len(prompts) == 10, group
    for indices in groups.values():  # one image per (prompt, seed) in a set; two sets may share an image
        assert len({(plan.cases[i].prompt, plan.cases[i].seed) for i in indices}) == len(indices)
    assert all(any(w in plan.cases[i].prompt for w in ("disc",)) for i in groups["forget/synonyms"])


def test_retain_prompts_never_ask_for_erased_or_target_concepts():
    plan = shapes_plan("circle", erased=("striped", "star"), size=PlanSize(forget_images=12, retain_images=12))
    for case in plan.cases:
        if case.group.startswith("retain/"):
            named = dict(case.attributes)
            assert named["object"] not in ("circle", "star") and named["style"] != "striped", case


def test_a_head_with_few_retained_concepts_gets_more_images_each():
    """Late in a lineage most styles are erased: each remaining one gets more images, so the style head's
    check rests on at least retain_head_images (the n its bound was calibrated at)."""
    plan = shapes_plan("gradient", erased=("circle", "striped", "star", "dotted", "heart"))
    groups = plan.groups()
    styles = {g: len(i) for g, i in groups.items() if g.startswith("retain/in/")}
    objects = {g: len(i) for g, i in groups.items() if g.startswith("retain/cross/")}
    assert sorted(styles) == ["retain/in/checkered", "retain/in/solid", "retain/in/speckled"]
    assert set(styles.values()) == {48} and len(objects) == 5 and set(objects.values()) == {30}
    assert PlanSize().per_retained_concept(7) == 24 and PlanSize(retain_head_images=0).per_retained_concept(1) == 24


def test_heldout_group_uses_only_heldout_templates():
    plan = shapes_plan("dotted", size=PlanSize.quick(6))
    starts = tuple(t.split("{")[0] for t in HELDOUT_TEMPLATES)
    assert all(plan.cases[i].prompt.startswith(starts) for i in plan.groups()["forget/heldout"])


def test_prompts_and_seeds_are_stable_from_one_request_to_the_next():
    """A retain concept keeps its (prompt, seed) pairs when another concept is erased, except for the prompts
    that would name the newly erased one: the base's images of the rest come from the cache."""
    first = shapes_plan("circle")
    second = shapes_plan("striped", erased=("circle",))
    square_first = {(c.prompt, c.seed) for c in first.cases if c.group.endswith("/square")}
    square_second = {(c.prompt, c.seed) for c in second.cases if c.group.endswith("/square")}
    assert not any("striped" in p for p, _ in square_second)
    kept = {pair for pair in square_first if "striped" not in pair[0]}
    assert kept and kept <= square_second


def test_a_plan_is_the_same_in_another_process():
    """The base's images are cached by (prompt, seed) across processes: a plan must not depend on anything
    a new process changes (string hashing is salted per process, so a set's order would)."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json; from unlearning.shapes.plan import shapes_plan; "
        "print(json.dumps([[c.group, c.prompt, c.seed] for c in shapes_plan('star', erased=('striped',)).cases]))"
    )
    here = [[c.group, c.prompt, c.seed] for c in shapes_plan("star", erased=("striped",)).cases]
    for salt in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": salt},
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads(result.stdout.strip().splitlines()[-1]) == here


@pytest.mark.parametrize(
    "kwargs",
    [{"target": "teapot"}, {"target": "star", "erased": ("star",)}, {"target": "star", "size": PlanSize.quick(0)}],
)
def test_bad_plans_are_refused(kwargs):
    with pytest.raises(PlanError):
        shapes_plan(**kwargs)


def test_the_erasing_templates_never_contain_a_heldout_evaluation_template():
    assert not set(ERASE_TEMPLATES) & set(HELDOUT_TEMPLATES)
    prompts = shapes_prompts("circle", synonyms=("disc",), per_concept=80, templates="erase", preserve_per_concept=12)
    assert len(prompts.target) == len(set(prompts.target)) == 80
    heldout_starts = tuple(t.split("{")[0] for t in HELDOUT_TEMPLATES)
    assert not any(p.startswith(heldout_starts) for p in prompts.target + prompts.preserve)
    assert all(a != t for a, t in zip(prompts.anchor, prompts.target))


def test_an_erased_concept_becomes_a_surrogate_of_its_domain_that_is_not_erased():
    circle = shapes_prompts("circle", synonyms=("disc",))
    assert set(circle.anchor_words) == {"square"}
    assert all("square" in a and "circle" not in a and "disc" not in a for a in circle.anchor)
    assert set(shapes_prompts("striped").anchor_words) == {"solid"}
    assert set(shapes_prompts("square").anchor_words) == {"triangle"}
    # never towards a concept erased before: the edit would bring it back
    after_square = shapes_prompts("circle", erased=("square",))
    assert set(after_square.anchor_words) == {"triangle"}
    assert {p.anchor_words[0] for p in after_square.earlier} == {"triangle"}
    assert set(shapes_prompts("circle", anchor="ring").anchor_words) == {"ring"}  # an explicit anchor wins
