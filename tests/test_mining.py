"""Mining (unlearning/mining.py): the parent's images of the method's broad prompts, judged; the prompts
it draws the concept for, by the sweep's rule."""

import numpy as np
import pytest

from unlearning.evaluation.sweep import drawn_for_the_prompt
from unlearning.mining import MINE_SEEDS, drawn_by, mine_prompts
from unlearning.sampling import load_model


def test_drawn_for_the_prompt_needs_half_the_seeds_and_more_than_the_background():
    hits = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    # background 0.05: 2 of 4 has P = 0.014 > 0.01 (chance), 4 of 4 has P = 6e-6
    assert drawn_for_the_prompt(hits, 0.05).tolist() == [True, False, False, False]
    # a background of nearly nothing: 2 of 4 is no longer chance
    assert drawn_for_the_prompt(hits, 0.001).tolist() == [True, True, False, False]


class SeesThePrompts:
    """A judge double: on its n-th call, sees "circle" on the images whose positions `calls[n]` names,
    "square" elsewhere — what mining must keep is the images' order (prompt-major, its seeds together) and
    its two passes (one seed each, then more seeds for the prompts the first showed it on)."""

    heads = {"object": ("circle", "square")}

    def __init__(self, *calls: set[int]):
        self.calls, self.shapes = list(calls), []

    def probabilities(self, images):
        seen = self.calls.pop(0)
        self.shapes.append(len(images))
        probs = np.tile([0.0, 1.0], (len(images), 1))
        probs[sorted(seen)] = [1.0, 0.0]
        return {"object": probs}


@pytest.mark.slow
def test_mining_screens_every_prompt_once_and_confirms_those_drawn_on_more_seeds(tiny_base):
    pipe = load_model(tiny_base)
    prompts = ["a lantern", "the harbour in the middle", "an image of the orchard", "a pebble"]
    prompts += ["a kettle", "the meadow", "a violin", "an image of the quarry"]
    # screen: circles on the lantern and the orchard (background 2/8); more seeds: every lantern image,
    # one orchard image of three (2 of 4 in all: "at least half", but chance at a background of 0.25)
    judge = SeesThePrompts({0, 2}, {0, 1, 2, 3})
    mined, record = mine_prompts(
        pipe, judge, head="object", concept="circle", prompts=prompts, steps=2, guidance_scale=5.0
    )
    assert judge.shapes == [8, 2 * (MINE_SEEDS - 1)]  # the second pass samples only the two screened hits
    assert mined == ["a lantern"] and record["screened_hits"] == 2
    assert record["background"] == pytest.approx(0.25) and record["mined"] == [{"prompt": "a lantern", "hits": 4}]


@pytest.mark.slow
def test_mining_finds_nothing_to_confirm_when_the_screen_shows_no_concept(tiny_base):
    pipe = load_model(tiny_base)
    judge = SeesThePrompts(set())
    mined, record = mine_prompts(
        pipe, judge, head="object", concept="circle", prompts=["a lantern", "a pebble"], steps=2, guidance_scale=5.0
    )
    assert mined == [] and judge.shapes == [2] and record["screened_hits"] == 0


@pytest.mark.slow
def test_with_one_seed_every_image_showing_the_concept_is_mined(tiny_base):
    pipe = load_model(tiny_base)
    prompts = ["a lantern", "the harbour in the middle", "a pebble"]
    judge = SeesThePrompts({0})
    mined, record = mine_prompts(
        pipe, judge, head="object", concept="circle", prompts=prompts, steps=2, guidance_scale=5.0, seeds_each=1
    )
    # one image in three: a background of 1/3, which the four-seed rule would call chance
    assert mined == ["a lantern"] and record["seeds"] == 1 and judge.shapes == [3]


def test_drawn_by_judges_the_parent_s_image_of_each_prompt_on_the_screening_seed():
    """`drawn_by` (the parent's verdicts for continual-uce's `relocation_away_screen`): the shipped shapes model
    and its judge see circle on a prompt that asks for one and not on one that asks for a square, on the
    screening's seed (the same verdicts when asked again, in another order)."""
    from unlearning.shapes.world import ShapesWorld

    pipe = load_model("shapes")
    drawn = drawn_by(pipe, ShapesWorld().judges()[0], head="object", concept="circle", steps=16, guidance_scale=5.0)
    circle, square = "a red circle", "a red square"  # judged 1.00 and 0.00 circle on their screening seeds
    assert drawn([circle, square]).tolist() == [True, False]
    assert drawn([square, circle]).tolist() == [False, True]
