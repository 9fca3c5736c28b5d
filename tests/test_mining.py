"""Mining (unlearning/mining.py): the parent's images of the method's broad prompts, judged; the prompts
it draws the concept for, by the sweep's rule."""

import numpy as np
import pytest

from unlearning.evaluation.sweep import drawn_for_the_prompt
from unlearning.mining import MINE_SEEDS, mine_prompts
from unlearning.sampling import load_model


def test_drawn_for_the_prompt_needs_half_the_seeds_and_more_than_the_background():
    hits = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    # background 0.05: 2 of 4 has P = 0.014 > 0.01 (chance), 4 of 4 has P = 6e-6
    assert drawn_for_the_prompt(hits, 0.05).tolist() == [True, False, False, False]
    # a background of nearly nothing: 2 of 4 is no longer chance
    assert drawn_for_the_prompt(hits, 0.001).tolist() == [True, True, False, False]


class SeesTheFirstPrompt:
    """A judge double: sees "circle" on the first prompt's images (the first MINE_SEEDS), "square" elsewhere
    — the images' order is what mining must keep (prompt-major, its seeds together)."""

    heads = {"object": ("circle", "square")}

    def __init__(self, seeds_each=MINE_SEEDS):
        self.seeds_each = seeds_each

    def probabilities(self, images):
        probs = np.tile([0.0, 1.0], (len(images), 1))
        probs[: self.seeds_each] = [1.0, 0.0]
        return {"object": probs}


@pytest.mark.slow
def test_mining_samples_every_prompt_on_its_seeds_and_keeps_those_drawn(tiny_base):
    pipe = load_model(tiny_base)
    prompts = ["a lantern", "the harbour in the middle", "an image of the orchard", "a pebble"]
    mined, record = mine_prompts(
        pipe, SeesTheFirstPrompt(), head="object", concept="circle", prompts=prompts, steps=2, guidance_scale=5.0
    )
    assert mined == ["a lantern"]
    assert record["background"] == pytest.approx(0.25) and record["mined"] == [{"prompt": "a lantern", "hits": 4}]


@pytest.mark.slow
def test_with_one_seed_every_image_showing_the_concept_is_mined(tiny_base):
    pipe = load_model(tiny_base)
    prompts = ["a lantern", "the harbour in the middle", "a pebble"]
    mined, record = mine_prompts(
        pipe,
        SeesTheFirstPrompt(seeds_each=1),
        head="object",
        concept="circle",
        prompts=prompts,
        steps=2,
        guidance_scale=5.0,
        seeds_each=1,
    )
    # one image in three: a background of 1/3, which the four-seed rule would call chance
    assert mined == ["a lantern"] and record["seeds"] == 1
