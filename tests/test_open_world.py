"""The open world judged by a CLIP (unlearning/world.py `OpenWorld`, unlearning/open_plan.py): its settings, its
judge's classes, its plans, and the erosion checks run on its judge (a tiny CLIP from tests/test_clip_judge.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.settings import LetheSettings
from pipeline.world import world_for
from tests.test_clip_judge import tiny_clip
from unlearning.evaluation.clip_judge import JudgeModelError
from unlearning.evaluation.plan import PlanError, PlanSize
from unlearning.open_plan import DISTRACTORS, HELDOUT_TEMPLATES, LineageConcepts
from unlearning.prompts import GENERIC_TEMPLATES
from unlearning.world import NoJudge, OpenWorld

CONCEPTS = LineageConcepts("cat", "animal", ("dog", "van gogh"), ("car",))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    tiny_clip(folder)
    return str(folder)


def test_the_settings_name_the_judge_and_its_styles_in_normal_form(tmp_path, monkeypatch, clip_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LETHE_JUDGE_MODEL", clip_dir)
    monkeypatch.setenv("LETHE_JUDGE_STYLES", "Van  Gogh, ＵＫＩＹＯ-Ｅ,")
    settings = LetheSettings(world="open")
    assert settings.judge_model == clip_dir and settings.judge_styles == ["van gogh", "ukiyo-e"]
    world = world_for(settings, CONCEPTS)
    assert isinstance(world, OpenWorld) and world.judge_model == clip_dir
    assert [world.head_of(c) for c in ("Van Gogh", "ukiyo-e", "cat", "watercolour painting")] == [
        "style",
        "style",
        "object",
        "style",
    ]
    assert world_for(LetheSettings(world="shapes")).name == "shapes"  # the shapes world ignores the judge


def test_a_concept_listed_as_an_object_and_as_a_style_is_one_settings_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LETHE_JUDGE_OBJECTS", "circle, Striped ,ring")
    monkeypatch.setenv("LETHE_JUDGE_STYLES", "striped,dotted")
    with pytest.raises(ValueError, match="judge_objects and judge_styles both list striped: a concept is one or"):
        LetheSettings(world="open")
    monkeypatch.setenv("LETHE_JUDGE_STYLES", "dotted")
    settings = LetheSettings(world="open", judge_model="/nowhere")
    assert settings.judge_objects == ["circle", "striped", "ring"]
    world = world_for(settings, LineageConcepts("circle"))
    assert world.heads()["object"][:3] == ("circle", "striped", "ring") and world.heads()["style"][0] == "dotted"
    monkeypatch.setenv("LETHE_NUDITY_CONCEPTS", "nudity,Dotted")  # NudeNet judges it: not a CLIP class too
    with pytest.raises(ValueError, match="nudity_concepts and the judge's lists .* both name dotted: NudeNet"):
        LetheSettings(world="open")


def test_the_judge_tells_the_lineage_s_concepts_from_distractors():
    world = OpenWorld("/nowhere", styles=("van gogh",), concepts=CONCEPTS)
    heads = world.heads()
    assert heads["object"][:4] == ("cat", "animal", "dog", "car")
    assert heads["object"][4:] == tuple(d for d in DISTRACTORS["object"] if d not in ("dog", "car"))  # named once
    assert heads["style"] == ("van gogh", *DISTRACTORS["style"])
    assert OpenWorld("/nowhere", concepts=LineageConcepts("bird")).heads()["object"].count("bird") == 1


def test_the_judge_also_tells_apart_the_classes_the_operator_lists():
    """Per head: the lineage's concepts, then the listed classes not named yet, then the distractors not named
    yet; a listed style is judged in the style head, a listed object in the object head even where a style
    distractor has its name."""
    world = OpenWorld(
        "/nowhere",
        objects=("Square", "circle", "ring", "dog", "cartoon"),
        styles=("striped", "van gogh"),
        concepts=LineageConcepts("circle", preserve=("ring",)),
    )
    heads = world.heads()
    assert heads["object"] == (
        "circle",
        "ring",
        "square",
        "dog",
        "cartoon",
        *(d for d in DISTRACTORS["object"] if d != "dog"),
    )
    assert heads["style"] == ("striped", "van gogh", *(d for d in DISTRACTORS["style"] if d != "cartoon"))
    assert [world.head_of(c) for c in ("Striped", "square", "cartoon", "oil painting")] == [
        "style",
        "object",
        "object",
        "style",
    ]
    striped = OpenWorld("/nowhere", objects=("circle",), styles=("striped",), concepts=LineageConcepts("striped"))
    assert striped.heads()["style"][0] == "striped" and "striped" not in striped.heads()["object"]
    with pytest.raises(ValueError, match="listed both as objects and as styles: striped"):
        OpenWorld(objects=("striped",), styles=("Striped",))


def test_the_plan_retains_every_listed_class_it_does_not_forget(clip_dir):
    """The shapes world's main job in the open world: the circle request retains ring (preserved) and every
    other listed object and style, at the shapes world's sizes (>= 144 images a head, 24 a concept)."""
    from unlearning.shapes.vocabulary import OBJECTS, STYLES

    world = OpenWorld(clip_dir, objects=OBJECTS, styles=STYLES, concepts=LineageConcepts("circle", preserve=("ring",)))
    plan = world.plan("circle", synonyms=("disc",), size=PlanSize())
    sizes = {g: len(i) for g, i in plan.groups().items() if g.startswith("retain/")}
    assert sizes == {
        **{f"retain/in/{o}": 24 for o in ("ring", *(o for o in OBJECTS if o not in ("circle", "ring")))},
        **{f"retain/cross/{s}": 24 for s in STYLES},
    }
    assert list(sizes)[0] == "retain/in/ring"  # the lineage's concepts first
    star = OpenWorld(clip_dir, objects=OBJECTS, styles=STYLES, concepts=LineageConcepts("star", erased=("circle",)))
    retained = {g for g in star.plan("star", erased=("circle",), size=PlanSize.quick(3)).groups() if "retain" in g}
    assert retained == {f"retain/in/{o}" for o in OBJECTS if o not in ("star", "circle")} | {
        f"retain/cross/{s}" for s in STYLES
    }  # neither the target nor an erased concept, and no distractor once classes are listed


def test_the_plan_has_the_shapes_world_s_groups_and_sizes(clip_dir):
    world = OpenWorld(clip_dir, styles=("van gogh",), concepts=CONCEPTS)
    plan = world.plan("cat", synonyms=("kitty",), erased=("car",), size=PlanSize())
    groups = plan.groups()
    assert sorted(groups) == [
        "forget/gate",
        "forget/heldout",
        "forget/synonyms",
        "rebound/car",
        "retain/cross/van gogh",
        "retain/in/animal",
        "retain/in/dog",
    ]
    sizes = {g: len(i) for g, i in groups.items()}
    # 32 phrasings x 3 seeds per forget and rebound set; >= 144 retained images per judge head: 2 objects of
    # 24 phrasings x 3 seeds, 1 style of which only 32 phrasings exist (4 templates x 8 contexts) x 5 seeds
    assert sizes == {
        "forget/gate": 96,
        "forget/heldout": 96,
        "forget/synonyms": 96,
        "rebound/car": 96,
        "retain/in/animal": 72,
        "retain/in/dog": 72,
        "retain/cross/van gogh": 160,
    }
    prompts = {g: {plan.cases[i].prompt for i in idx} for g, idx in groups.items()}
    assert len(prompts["forget/gate"]) == 32 and len(prompts["forget/heldout"]) == 32
    gate_templates = [t.format("cat") for t in GENERIC_TEMPLATES]
    assert all(any(p.startswith(t) for t in gate_templates) for p in prompts["forget/gate"])
    assert all(any(p.startswith(t.format("cat")) for t in HELDOUT_TEMPLATES) for p in prompts["forget/heldout"])
    assert not prompts["forget/gate"] & prompts["forget/heldout"]
    assert all("kitty" in p for p in prompts["forget/synonyms"])
    retained = prompts["retain/in/animal"] | prompts["retain/in/dog"] | prompts["retain/cross/van gogh"]
    assert not any("cat" in p.split() or "car" in p.split() for p in retained)
    assert {plan.cases[i].domain for i in groups["retain/cross/van gogh"]} == {"style"}
    assert {plan.cases[i].domain for i in groups["forget/gate"]} == {"object"}
    assert world.plan("cat", synonyms=("kitty",), erased=("car",), size=PlanSize()) == plan  # seeds repeat


def test_a_lineage_that_names_nothing_to_keep_retains_the_everyday_distractors(clip_dir):
    plan = OpenWorld(clip_dir, concepts=LineageConcepts("cat")).plan("cat", size=PlanSize.quick(3))
    assert sorted(g for g in plan.groups() if g.startswith("retain/")) == sorted(
        f"retain/in/{c}" for c in DISTRACTORS["object"]
    )


def test_what_the_open_world_cannot_judge_is_refused_before_anything_loads(tmp_path, clip_dir):
    with pytest.raises(NoJudge, match="no judge configured .*LETHE_JUDGE_MODEL"):
        OpenWorld(concepts=CONCEPTS).plan("cat")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(JudgeModelError, match="config.json has model_type 'bert'"):
        OpenWorld(str(tmp_path / "bert"), concepts=CONCEPTS).plan("cat")
    with pytest.raises(PlanError, match="built for cat, animal, dog, van gogh, car; it cannot judge horse"):
        OpenWorld(clip_dir, concepts=CONCEPTS).plan("horse")
    with pytest.raises(PlanError, match="also listed as erased"):
        OpenWorld(clip_dir, concepts=CONCEPTS).plan("car", erased=("car",))


def test_the_erosion_checks_run_on_the_open_world_s_judge(clip_dir):
    """Every check of a plan (rates, retention on the judge's feature maps, FID/KID on its embeddings,
    alignment) runs with the CLIP judge in the first place; a candidate identical to the base keeps all
    it retained (relative 1) and is 0 away from it."""
    from unlearning.evaluation.checks import run_checks

    world = OpenWorld(clip_dir, styles=("van gogh",), concepts=CONCEPTS)
    plan = world.plan("cat", erased=("car",), size=PlanSize.quick(6))
    [judge] = world.judges()
    assert judge.heads == world.heads() and world.judges()[0] is judge  # loaded once
    images = np.random.default_rng(0).integers(0, 256, (len(plan.cases), 32, 32, 3), dtype=np.uint8)
    results = run_checks(plan, world.judges(), images, images)
    assert set(results["forget"]) == {"gate", "heldout", "synonyms"} and set(results["rebound"]) == {"car"}
    assert results["retention"]["distance"] == pytest.approx(0.0, abs=1e-9)
    assert results["fid"]["fid"] == pytest.approx(0.0, abs=1e-3)
    assert results["fid"]["n"] == len([c for c in plan.cases if c.group.startswith("retain/")])
    for group, detection in results["groups"].items():
        assert detection["detection"] == detection["base_detection"], group


def test_the_cli_refuses_a_judge_that_is_not_a_clip_in_one_line(tmp_path):
    """`lethe evaluate` on an open-world lineage whose judge_model is a BERT folder: exit 2, one line naming
    the folder and what was expected, before any model is loaded."""
    import os
    import subprocess
    import sys

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "LETHE_HOME": str(tmp_path / "home"),
        "LETHE_WORLD": "open",
        "LETHE_JUDGE_MODEL": str(tmp_path / "bert"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "evaluate", "--target", "cat"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"judge_model {tmp_path / 'bert'}: config.json has model_type 'bert'" in lines[0]
    assert "expected a CLIP model" in lines[0]
