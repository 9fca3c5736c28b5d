"""Unit tests of the unlearning pieces, with the expected values derived by hand in the docstrings."""

import pytest
import torch

from tests.tiny_models import step_context
from unlearning.methods import duge, get_method
from unlearning.parameters import trainable_names
from unlearning.surgery import surgery_backward


def test_l2_sp_is_mean_squared_distance_to_the_base():
    """θ = {a: [1, 2], b: [3]}, θ_0 = {a: [0, 0], b: [1]}:
    Σ‖θ−θ_0‖² = 1 + 4 + 4 = 9 over 3 elements -> 3.0."""
    trained = {"a": torch.nn.Parameter(torch.tensor([1.0, 2.0])), "b": torch.nn.Parameter(torch.tensor([3.0]))}
    base = {"a": torch.zeros(2), "b": torch.tensor([1.0])}
    torch.testing.assert_close(duge.l2_sp(trained, base), torch.tensor(3.0))


def test_concept_attention_averages_the_concept_tokens():
    """One layer, batch 1, two queries, three tokens; concept = tokens 1 and 2.
    Query 0 attends (0.2, 0.3, 0.5) -> (0.3 + 0.5) / 2 = 0.4; query 1 (0.6, 0.4, 0.0) -> 0.2."""
    maps = {"l": torch.tensor([[[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]]])}
    tokens = torch.tensor([[False, True, True]])
    torch.testing.assert_close(duge.concept_attention(maps, tokens)["l"], torch.tensor([[0.4, 0.2]]))


def test_attention_loss_drives_target_tokens_towards_the_anchor_map():
    """Student map on its concept token = (0.4, 0.2); parent's anchor-token map = (0.1, 0.2):
    squared error summed over queries = 0.09 + 0 = 0.09, per batch element (batch 1)."""
    student = {"l": torch.tensor([[[0.6, 0.4], [0.8, 0.2]]])}
    parent = {"l": torch.tensor([[[0.9, 0.1], [0.8, 0.2]]])}
    loss = duge.attention_loss(student, parent, torch.tensor([[False, True]]), torch.tensor([[False, True]]))
    torch.testing.assert_close(loss, torch.tensor(0.09))
    empty_anchor = duge.attention_loss(student, parent, torch.tensor([[False, True]]), torch.tensor([[False, False]]))
    torch.testing.assert_close(empty_anchor, torch.tensor(0.16 + 0.04))  # driven to zero attention


def test_gradient_surgery_projects_only_conflicting_forget_gradients():
    """One parameter x (2-d), forget = g_f·x with g_f = (1, -1), preserve = g_p·x with g_p = (0, 1).
    g_f·g_p = -1 < 0, so g_f <- g_f − (−1/1)·g_p = (1, 0); total = (1, 0) + (0, 1) = (1, 1).
    With g_f = (1, 1) (no conflict) the total is g_f + g_p = (1, 2)."""
    x = torch.nn.Parameter(torch.zeros(2))
    surgery_backward(
        {"forget": (torch.tensor([1.0, -1.0]) * x).sum(), "preserve": (torch.tensor([0.0, 1.0]) * x).sum()}, [x]
    )
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 1.0]))
    x.grad = None
    surgery_backward(
        {"forget": (torch.tensor([1.0, 1.0]) * x).sum(), "preserve": (torch.tensor([0.0, 1.0]) * x).sum()}, [x]
    )
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 2.0]))


def test_esd_x_target_is_negative_guidance():
    """With a parent whose ε(z, c) = z + mean(c) and η = 1: target = ε(∅) − (ε(c) − ε(∅)).
    For z = 0, c ≡ 2, ∅ ≡ 0: ε(c) = 2, ε(∅) = 0 -> target = −2; a student predicting 0 has loss 4."""
    from unlearning.methods import esd_x

    class Toy(torch.nn.Module):
        def forward(self, z, t, c):
            return type("Out", (), {"sample": z + c.mean(dim=(1, 2)).view(-1, 1, 1, 1)})()

    class Zero(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, z, t, c):
            return type("Out", (), {"sample": z * 0 + self.w})()

    ctx = step_context(Zero(), Toy(), target_embeds=torch.full((1, 2, 3), 2.0), empty_embeds=torch.zeros(1, 2, 3))
    torch.testing.assert_close(esd_x.loss(ctx)["forget"], torch.tensor(4.0))


def test_parameter_sets_select_the_documented_tensors():

    from tests.tiny_models import kv_names, tiny_unet

    unet = tiny_unet()
    assert trainable_names(unet, "xattn-kv") == kv_names(unet)
    assert all(".attn2." in n for n in trainable_names(unet, "xattn"))
    assert len(trainable_names(unet, "full")) == len(list(unet.parameters()))
    with pytest.raises(ValueError, match="unknown parameter set"):
        trainable_names(unet, "everything")


@pytest.mark.parametrize("name", ["teleport", "ESD-X", ""])
def test_unknown_methods_are_refused(name):
    with pytest.raises(ValueError, match="unknown method"):
        get_method(name)


def test_the_adversarial_condition_is_one_signed_step_towards_the_parents_concept():
    """duge-on-uce's c_adv = c − ε·rms(c)·sign ∇_c ‖ε_θ(z, c) − ε_p(z, c_tgt)‖². A linear student
    ε_θ(z, c) = z + Σ_tokens c·a and a parent predicting z + 1: at c_tgt ≡ 0.5 the student predicts
    2·(0.5 − 1 + 0.25) = −0.5 < 1, so the attack raises c·a — every coordinate moves by
    ε·rms(c_tgt)·sign(a_d) = 0.1·0.5·sign(a_d) — and its loss falls."""
    from unlearning.methods.duge_on_uce import adversarial_condition

    a = torch.tensor([1.0, -2.0, 0.5])

    class Linear(torch.nn.Module):
        def forward(self, z, t, c):
            return type("Out", (), {"sample": z + (c @ a).sum(dim=1).view(-1, 1, 1, 1)})()

    class One(torch.nn.Module):
        def forward(self, z, t, c):
            return type("Out", (), {"sample": z + 1.0})()

    z = torch.zeros(1, 1, 2, 2)
    target = torch.full((1, 2, 3), 0.5)
    ctx = step_context(Linear(), One(), target_embeds=target)
    adversarial = adversarial_condition(ctx, 0.1)
    torch.testing.assert_close(adversarial - target, 0.05 * a.sign().expand(1, 2, 3))

    def attack_loss(c):
        return (Linear()(z, None, c).sample - 1.0).pow(2).mean()

    assert attack_loss(adversarial) < attack_loss(target)


def test_mined_rows_are_erased_by_negative_guidance_the_others_towards_the_anchor():
    """duge-on-uce with mined_guidance η: a mined row's target is ε_p(z, c_m) − η (ε_p(z, c_concept) −
    ε_p(z, ∅)). With a parent ε(z, c) = z + mean(c), z = 0, c_m ≡ 3, c_concept ≡ 2, ∅ ≡ 0 and η = 1:
    3 − (2 − 0) = 1; an ordinary row keeps the anchor's prediction (here 5)."""
    from unlearning.methods.duge_on_uce import mined_target

    class MeanOfCondition(torch.nn.Module):
        def forward(self, z, t, c):
            return type("Out", (), {"sample": z + c.mean(dim=(1, 2)).view(-1, 1, 1, 1)})()

    z = torch.zeros(2, 1, 2, 2)
    ctx = step_context(
        None,
        MeanOfCondition(),
        forget_noisy=z,
        forget_timesteps=torch.zeros(2),
        target_embeds=torch.full((2, 2, 3), 3.0),
        concept_embeds=torch.full((2, 2, 3), 2.0),
        empty_embeds=torch.zeros(2, 2, 3),
        forget_mined=torch.tensor([True, False]),
    )
    target = mined_target(ctx, 1.0)(torch.full((2, 1, 2, 2), 5.0))
    torch.testing.assert_close(target[0], torch.full((1, 2, 2), 1.0))
    torch.testing.assert_close(target[1], torch.full((1, 2, 2), 5.0))
