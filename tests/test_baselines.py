"""The baseline methods (ESD-u, Concept Ablation, RGD, UCE) on tiny tensors, with the expected values
derived by hand in the docstrings, and each one run through the one training loop on a tiny model."""

import pytest
import torch

from tests.tiny_models import shapes_prompts_for, step_context, tiny_unet
from unlearning import loop
from unlearning.delta import load_delta
from unlearning.loop import UnlearnConfig, run_unlearning
from unlearning.methods import ablation, esd_u, esd_x, rgd, uce
from unlearning.methods.context import EditContext
from unlearning.parameters import trainable_names
from unlearning.sampling import load_model


class Toy(torch.nn.Module):
    """A frozen parent whose prediction is ε(z, c) = z + mean(c)."""

    def forward(self, z, t, c):
        return type("Out", (), {"sample": z + c.mean(dim=(1, 2)).view(-1, 1, 1, 1)})()


class Constant(torch.nn.Module):
    """A student that predicts its one parameter w everywhere, whatever z and c are."""

    def __init__(self, value=0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(value))

    def forward(self, z, t, c):
        return type("Out", (), {"sample": z * 0 + self.w})()


# -- ESD-u: the ESD-x objective on the non-cross-attention weights


def test_non_xattn_is_every_tensor_outside_cross_attention():
    unet = tiny_unet()
    non_xattn, xattn = trainable_names(unet, "non-xattn"), trainable_names(unet, "xattn")
    assert non_xattn and not any(".attn2." in n for n in non_xattn)
    assert any(".attn1." in n for n in non_xattn) and "conv_in.weight" in non_xattn
    assert sorted(non_xattn + xattn) == sorted(trainable_names(unet, "full"))


def test_each_method_trains_its_own_parameter_set_unless_one_is_named():
    assert UnlearnConfig(concept="star", method="esd-u").params == "non-xattn"
    assert UnlearnConfig(concept="star", method="esd-u", params="xattn").params == "xattn"
    assert UnlearnConfig(concept="star").params == "xattn-kv"
    assert UnlearnConfig(concept="star", method="uce").params == "xattn-kv"
    with pytest.raises(ValueError, match="closed-form edit of xattn-kv only"):
        UnlearnConfig(concept="star", method="uce", params="xattn").validate()
    with pytest.raises(ValueError, match="unknown method"):
        UnlearnConfig(concept="star", method="teleport").validate()


def test_esd_u_target_is_the_esd_x_negative_guidance():
    """η = 1, z = 0, c_tgt ≡ 2, ∅ ≡ 0: ε_p(c) = 2, ε_p(∅) = 0, target = 0 − (2 − 0) = −2; a student
    predicting 0 has loss 4, the same as ESD-x's."""
    ctx = step_context(Constant(), Toy(), target_embeds=torch.full((1, 2, 3), 2.0), empty_embeds=torch.zeros(1, 2, 3))
    torch.testing.assert_close(esd_u.loss(ctx)["forget"], torch.tensor(4.0))
    torch.testing.assert_close(esd_u.loss(ctx)["forget"], esd_x.loss(ctx)["forget"])


# -- Concept Ablation


def test_ablation_matches_the_parent_under_the_anchor_prompt():
    """z = 0, c_tgt ≡ 2, c_anc ≡ 1, ε ≡ 3, student ≡ 0, λ_anchor = 0.5.
    forget = ‖0 − ε_p(z, c_anc)‖² = (0 − 1)² = 1 (with the target prompt's ε_p = 2 it would be 4);
    preserve = λ ‖ε_θ(z, c_anc) − ε‖² = 0.5 · (0 − 3)² = 4.5.
    ∂forget/∂w = 2(w − 1) = −2: descent moves the target prediction to the parent's anchor output."""
    student = Constant()
    ctx = step_context(
        student,
        Toy(),
        target_embeds=torch.full((1, 2, 3), 2.0),
        anchor_embeds=torch.full((1, 2, 3), 1.0),
        forget_noise=torch.full((1, 1, 2, 2), 3.0),
        hyper={"lambda_anchor": 0.5},
    )
    terms = ablation.loss(ctx)
    torch.testing.assert_close(terms["forget"], torch.tensor(1.0))
    torch.testing.assert_close(terms["preserve"], torch.tensor(4.5))
    terms["forget"].backward()
    torch.testing.assert_close(student.w.grad, torch.tensor(-2.0))


# -- RGD


def test_rgd_ascends_the_target_denoising_loss_up_to_its_bound():
    """Student ≡ w = 0, target-prompt noise ε ≡ 1: L_f = (0 − 1)² = 1 < m = 1.5, forget = −1 and
    ∂forget/∂w = −2(w − 1) = +2, so a descent step lowers w, away from ε: the error grows (ascent).
    With ε ≡ 2, L_f = 4 > m: forget = −1.5 and its gradient is 0 (the truncation).
    Retain noise ε_r ≡ 1: preserve = α · (0 − 1)² = 1.5 with the default α."""
    student = Constant()
    ctx = step_context(
        student,
        Toy(),
        target_embeds=torch.zeros(1, 2, 3),
        preserve_embeds=torch.zeros(1, 2, 3),
        forget_noise=torch.ones(1, 1, 2, 2),
        preserve_noise=torch.ones(1, 1, 2, 2),
    )
    terms = rgd.loss(ctx)
    torch.testing.assert_close(terms["forget"], torch.tensor(-1.0))
    torch.testing.assert_close(terms["preserve"], torch.tensor(1.5))
    terms["forget"].backward()
    torch.testing.assert_close(student.w.grad, torch.tensor(2.0))

    student.w.grad = None
    far = rgd.loss(
        step_context(
            student,
            Toy(),
            target_embeds=torch.zeros(1, 2, 3),
            preserve_embeds=torch.zeros(1, 2, 3),
            forget_noise=torch.full((1, 1, 2, 2), 2.0),
        )
    )
    torch.testing.assert_close(far["forget"], torch.tensor(-1.5))
    far["forget"].backward()
    torch.testing.assert_close(student.w.grad, torch.tensor(0.0))


# -- UCE


def test_uce_closed_form_by_hand():
    """W = [[1, 2], [3, 4]], erase c = e1 towards c* = e2, preserve e2, s_e = s_p = λ = 1:
    right = Σcᵀc + Σc_jc_jᵀ + λI = e1e1ᵀ + e2e2ᵀ + I = 2I; left = e2e1ᵀ + e2e2ᵀ + I = [[1, 0], [1, 2]];
    W·left·right⁻¹ = [[3, 4], [7, 8]] / 2 = [[1.5, 2], [3.5, 4]].
    So W'e2 = (2, 4) = W e2 (preserved) and W'e1 = (1.5, 3.5), halfway from W e1 = (1, 3) to
    v* = W e2 = (2, 4), the λ‖W − W_old‖² pull. With λ → 0 the erase is exact: W'e1 → (2, 4)."""
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    edited = uce.closed_form(weight, e1, e2, e2, erase_scale=1.0, preserve_scale=1.0, lambda_identity=1.0)
    torch.testing.assert_close(edited, torch.tensor([[1.5, 2.0], [3.5, 4.0]]))
    exact = uce.closed_form(weight, e1, e2, e2, erase_scale=1.0, preserve_scale=1.0, lambda_identity=1e-9)
    torch.testing.assert_close(exact @ e1[0], weight @ e2[0])
    torch.testing.assert_close(exact @ e2[0], weight @ e2[0])


def test_uce_pairs_tokens_around_the_concept_word():
    """1-d embeddings equal to a token's name. Target '[CLS] a striped heart [SEP]' = (0, 1, 2, 3, 4),
    word at 2; empty anchor '[CLS] a heart [SEP] pad' = (10, 11, 13, 14, 15). Before the word by
    position: 0↔10, 1↔11; after it shifted by the missing word: 3↔13, 4↔14; the word takes the token
    before the gap: 2↔11.
    Target '[CLS] a circle [SEP] pad' = (0..4) against a two-token anchor word '[CLS] a po ly [SEP]'
    = (10..14): 0↔10, 1↔11, 3↔14, pad 4 would map past the end and is dropped, 2↔mean(12, 13)."""
    target = torch.arange(5.0).view(1, 5, 1)
    keys, values = uce.aligned_pairs(
        target,
        torch.tensor([10.0, 11, 13, 14, 15]).view(1, 5, 1),
        torch.tensor([[False, False, True, False, False]]),
        torch.zeros(1, 5, dtype=torch.bool),
    )
    assert keys.flatten().tolist() == [0, 1, 3, 4, 2] and values.flatten().tolist() == [10, 11, 13, 14, 11]
    keys, values = uce.aligned_pairs(
        target,
        torch.arange(10.0, 15.0).view(1, 5, 1),
        torch.tensor([[False, False, True, False, False]]),
        torch.tensor([[False, False, True, True, False]]),
    )
    assert keys.flatten().tolist() == [0, 1, 3, 2] and values.flatten().tolist() == [10, 11, 14, 12.5]


def test_uce_edit_maps_target_tokens_to_the_anchor_values_and_refuses_other_tensors():
    """Random 4-d tokens, one prompt of 3 tokens with the word at 1 and a one-token anchor word.
    With λ tiny and no preserve set the erase residual is ~0; the weight is edited in place."""
    generator = torch.Generator().manual_seed(0)
    target, anchor = torch.randn(1, 3, 4, generator=generator), torch.randn(1, 3, 4, generator=generator)
    words = torch.tensor([[False, True, False]])
    weight = torch.nn.Parameter(torch.randn(5, 4, generator=generator))
    before = weight.detach().clone()

    def context(name, hyper):
        return EditContext(
            trained={name: weight},
            base_values={name: before},
            target_embeds=target,
            anchor_embeds=anchor,
            target_tokens=words,
            anchor_tokens=words,
            preserve_embeds=torch.zeros(1, 1, 4),
            replay_embeds=torch.zeros(0, 1, 4),
            hyper=hyper,
        )

    logs = uce.edit(context("mid.attn2.to_v.weight", {"preserve_scale": 0.0, "lambda_identity": 1e-8}))
    assert logs["erase_residual"] < 1e-6
    torch.testing.assert_close(weight.detach() @ target[0, 1], before @ anchor[0, 1], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="to_k/to_v"):
        uce.edit(context("mid.attn2.to_q.weight", {}))


# -- each method through the one loop, on a tiny model


@pytest.mark.slow
@pytest.mark.parametrize("method", ["esd-u", "ablation", "rgd", "uce"])
def test_each_baseline_runs_through_the_loop(method, tiny_base, tmp_path, monkeypatch):
    surgeries = []
    real_surgery = loop.surgery_backward

    def counting_surgery(terms, params):
        surgeries.append(1)
        real_surgery(terms, params)

    monkeypatch.setattr(loop, "surgery_backward", counting_surgery)
    pipe = load_model(tiny_base)
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    cfg = UnlearnConfig(
        concept="circle",
        synonyms=("disc",),
        preserve=("ring",),
        erased=("striped",),
        method=method,
        steps=2,
        batch_size=2,
        prompts_per_concept=4,
        data_steps=2,
    )
    summary = run_unlearning(
        pipe,
        cfg,
        tmp_path / method,
        prompts=shapes_prompts_for(cfg),
        model_sha="tiny",
        base_values=base,
        progress=False,
    )

    delta, header = load_delta(tmp_path / method / "delta.safetensors")
    assert header["method"] == method and header["params"] == cfg.params
    assert delta and any(v.abs().max() > 0 for v in delta.values()), "the step must change the trained tensors"
    if method == "esd-u":
        assert not any(".attn2." in k for k in delta) and any(".attn1." in k for k in delta)
    else:
        assert all(".attn2.to_k." in k or ".attn2.to_v." in k for k in delta)
    assert len(surgeries) == (2 if method == "rgd" else 0)  # RGD always uses the restricted gradient
    if method == "uce":
        assert str(header["steps"]) == "0" and 0 <= summary["final_terms"]["erase_residual"] < 1, summary["final_terms"]
