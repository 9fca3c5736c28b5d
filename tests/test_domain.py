"""Domain correction (DoCo, Wu et al. AAAI 2025): the discriminator's losses derived by hand, D learning
to separate two domains, and the option run through the loop (2 steps) and resumed after a kill."""

import math

import pytest
import torch

from tests.tiny_models import assert_same_weights, kill_after_checkpoint, shapes_prompts_for
from unlearning import domain
from unlearning.delta import load_delta
from unlearning.loop import UnlearnConfig, run_unlearning
from unlearning.sampling import load_model


def test_discriminator_and_generator_losses_by_hand():
    """softplus(x) = ln(1 + eˣ). Real logits r = (0, ln 3), fake logits f = (0, −ln 3):
    L_D = mean softplus(−r) + mean softplus(f)
        = (ln 2 + ln(1 + 1/3))/2 + (ln 2 + ln(1 + 1/3))/2 = ln 2 + ln(4/3) = ln(8/3);
    L_adv = mean softplus(−f) = (ln 2 + ln(1 + 3))/2 = (ln 2 + 2 ln 2)/2 = 1.5 ln 2.
    A fake the discriminator takes for real (f = +ln 3) costs the student less: softplus(−ln 3) = ln(4/3)."""
    r = torch.tensor([0.0, math.log(3)])
    f = torch.tensor([0.0, -math.log(3)])
    torch.testing.assert_close(domain.discriminator_loss(r, f), torch.tensor(math.log(8 / 3)))
    torch.testing.assert_close(domain.generator_loss(f), torch.tensor(1.5 * math.log(2)))
    torch.testing.assert_close(domain.generator_loss(torch.tensor([math.log(3)])), torch.tensor(math.log(4 / 3)))


def test_discriminator_gives_patch_logits_and_learns_to_separate_two_domains():
    """Real = latents with mean +1, fake = mean −1: a few D steps must bring L_D well below its chance
    value 2 ln 2 (both logits 0), and push real logits above fake ones; D is built the same from a seed."""
    discriminator = domain.make_discriminator(4, seed=0, width=8)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            discriminator.state_dict().values(), domain.make_discriminator(4, seed=0, width=8).state_dict().values()
        )
    )
    optimizer = domain.make_optimizer(discriminator, lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(4, 4, 8, 8, generator=generator) + 1.0
    fake = torch.randn(4, 4, 8, 8, generator=generator) - 1.0
    assert discriminator(real).shape == (4, 1, 2, 2)
    losses = [float(domain.discriminator_step(discriminator, optimizer, real, fake)) for _ in range(30)]
    assert losses[-1] < 0.5 * 2 * math.log(2), losses
    with torch.no_grad():
        assert discriminator(real).mean() > discriminator(fake).mean()


def test_domain_correction_is_a_duge_option_with_its_own_hyper():
    UnlearnConfig(concept="star", method="duge", domain_correction=True, hyper={"lambda_domain": 0.5}).validate()
    with pytest.raises(ValueError, match="domain_correction: an option of duge"):
        UnlearnConfig(concept="star", method="esd-x", domain_correction=True).validate()
    with pytest.raises(ValueError, match="has no lambda_domain"):
        UnlearnConfig(concept="star", method="duge", hyper={"lambda_domain": 0.5}).validate()


CONFIG = UnlearnConfig(
    concept="circle",
    method="duge",  # a gradient method: these tests are about the training loop
    synonyms=("disc",),
    preserve=("ring",),
    domain_correction=True,
    steps=2,
    batch_size=2,
    prompts_per_concept=4,
    data_steps=2,
    checkpoint_every=1,
    hyper={"lambda_domain": 1.0},
)


def _run(tiny_base, out):
    pipe = load_model(tiny_base)
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    summary = run_unlearning(
        pipe, CONFIG, out, prompts=shapes_prompts_for(CONFIG), model_sha="tiny", base_values=base, progress=False
    )
    return pipe, summary


@pytest.mark.slow
def test_two_step_run_with_domain_correction_resumes_to_the_same_weights(tiny_base, tmp_path, monkeypatch):
    uninterrupted, summary = _run(tiny_base, tmp_path / "a")
    terms = summary["final_terms"]
    assert terms["adv"] > 0 and terms["disc"] > 0, terms
    delta, _ = load_delta(tmp_path / "a" / "delta.safetensors")
    assert any(v.abs().max() > 0 for v in delta.values())

    def discriminator_saved(state):  # D and its Adam moments
        assert state["discriminator"] and state["discriminator_optimizer"]["state"]

    kill_after_checkpoint(monkeypatch, lambda: _run(tiny_base, tmp_path / "b"), check_state=discriminator_saved)
    resumed, summary = _run(tiny_base, tmp_path / "b")
    assert summary["resumed_from_step"] == 1
    assert_same_weights(uninterrupted.unet, resumed.unet)
