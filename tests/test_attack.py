"""The attack (unlearning/evaluation/attack.py) and the inversion diagnostics (inversion.py): the simplex
projection, typeable tokens, an attack that runs end to end on a tiny model, and — on the shipped shapes
base — that the attack finds the concept at once (the base draws it as asked)."""

from __future__ import annotations

import pytest
import torch

from unlearning.evaluation.attack import (
    AttackBudget,
    _project_simplex,
    _typeable_ids,
    attack_concept,
    optimise_prompt,
)

SAMPLER = {"scheduler": "ddim", "steps": 12, "guidance_scale": 5.0}


def test_projection_lands_on_the_simplex_and_keeps_points_there():
    """Duchi et al.: rows end non-negative with sum 1; a point already on the simplex is its own projection;
    (0.5, 0.5, 2) projects to (0, 0, 1) (θ = 1)."""
    w = torch.tensor([[0.5, 0.5, 2.0], [0.2, 0.3, 0.5], [-1.0, 3.0, 0.0]])
    projected = _project_simplex(w)
    assert torch.all(projected >= 0)
    torch.testing.assert_close(projected.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(projected[0], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(projected[1], w[1])
    torch.testing.assert_close(_project_simplex(projected), projected)


def test_only_typeable_tokens_are_searched(shapes_pipe):
    tokenizer = shapes_pipe.tokenizer
    ids = _typeable_ids(tokenizer)
    assert len(ids) > 10_000
    assert not set(ids) & set(tokenizer.all_special_ids)
    for index in ids[::997]:
        word = tokenizer.decode([index])
        assert word.isalpha() and tokenizer(word, add_special_tokens=False).input_ids == [index]


class _NeverSees:
    """A judge that never sees anything: the attack must run its whole budget and report no success."""

    heads = {"object": ("circle", "square")}

    def probabilities(self, images):
        import numpy as np

        p = np.zeros((len(images), 2))
        p[:, 1] = 1.0
        return {"object": p}


def test_an_attack_runs_its_budget_on_a_tiny_model(tmp_path):
    from tests.tiny_models import build_tiny_base
    from unlearning.sampling import load_model

    pipe = load_model(build_tiny_base(tmp_path / "tiny"))
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    budget = AttackBudget(tokens=3, steps=4, batch=2, check_every=2, check_seeds=1, confirm_seeds=1)
    result = optimise_prompt(
        pipe,
        pipe,
        _NeverSees(),
        head="object",
        concept="circle",
        prompt="a red circle",
        x0=x0,
        variant="p4d",
        budget=budget,
        sampler={"steps": 2, "guidance_scale": 2.0},
    )
    assert result["steps"] == 4 and result["checks"] == 2 and not result["success"]
    assert result["confirmed_rate"] is None and result["images"] is None
    words = result["adversarial_prompt"].removesuffix("a red circle").split()
    assert len(words) == 3 and all(w.isalpha() for w in words)  # three typeable words prepended


@pytest.mark.slow
def test_on_the_base_the_attack_finds_the_concept_at_once(shapes_pipe, judges):
    prompts = ["a red striped circle", "a blue solid circle", "a picture of a green circle with a dotted pattern"]
    results, images = attack_concept(
        shapes_pipe,
        shapes_pipe,
        judges[0],
        head="object",
        concept="circle",
        prompts=prompts,
        budget=AttackBudget(prompts=3, confirm_seeds=4),
        sampler=SAMPLER,
    )
    assert results["n"] == 3 and results["asr"] == 1.0 and results["before"] == 1.0
    assert all(not row["attacks"] for row in results["prompts"])  # drawn as asked: nothing to optimise
    assert set(images) == set(prompts)
