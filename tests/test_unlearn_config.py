"""The effective configuration of a step, resolved once (unlearning/config.py): what summary.json, MLflow's
params and the model card record is what ran — the method's hyper-parameter defaults under the request's
overrides, and no training steps for a closed-form edit."""

from __future__ import annotations

import pytest

from registry.model_card import model_card
from unlearning import domain
from unlearning.config import ConfigError, UnlearnConfig
from unlearning.methods import continual_uce, esd_x


def test_a_closed_form_records_no_training_steps_and_every_hyper_parameter():
    config = UnlearnConfig(concept="circle", method="continual-uce", steps=150, hyper={"erase_scale": 2.0})
    assert config.steps == 0  # nothing trained, whatever was asked
    assert config.hyper == {**continual_uce.DEFAULTS, "erase_scale": 2.0}
    effective = config.effective()
    assert not {"steps", "lr", "batch_size"} & set(effective)
    assert effective["hyper.erase_scale"] == 2.0
    assert effective["hyper.adversarial_rounds"] == continual_uce.DEFAULTS["adversarial_rounds"]
    assert effective["broad_prompts"] == continual_uce.BROAD_PROMPTS
    assert config.record()["hyper"] == config.hyper  # summary.json's "config" holds the same values


def test_a_loss_method_records_its_training_and_its_defaults_under_the_overrides():
    config = UnlearnConfig(concept="circle", method="duge", steps=40, domain_correction=True, hyper={"lambda_pp": 3})
    effective = config.effective()
    assert (effective["steps"], effective["lr"], effective["batch_size"]) == (40, config.lr, config.batch_size)
    assert effective["hyper.lambda_pp"] == 3
    assert effective["hyper.lambda_domain"] == domain.DEFAULTS["lambda_domain"]  # DoCo's, since it is on
    assert UnlearnConfig(concept="circle", method="esd-x").effective()["hyper.eta"] == esd_x.DEFAULTS["eta"]


def test_an_unknown_hyper_parameter_is_still_refused_by_name():
    with pytest.raises(ConfigError, match="esd-x has no lambda_pp"):
        UnlearnConfig(concept="circle", method="esd-x", hyper={"lambda_pp": 1.0}).validate()


def test_the_model_card_lists_the_settings_that_ran():
    params = UnlearnConfig(concept="circle", method="continual-uce").effective()
    card = model_card(
        model_name="shapes-t2i",
        version_label="(request r1)",
        base_model="shapes",
        erased=["circle"],
        request={"concept": "circle"},
        gate_passed=True,
        gate_reasons=[],
        metrics={},
        params=params,
    )
    settings = card.split("## Settings that ran", 1)[1].split("## Gate", 1)[0]
    assert f"- **hyper.broad_scale**: {continual_uce.DEFAULTS['broad_scale']}" in settings
    assert "steps" not in settings
    assert 'registry.loading.load_pipeline("models:/shapes-t2i/<version>")' in card  # a function that exists


@pytest.mark.parametrize("share", [0.0, 1.0, -0.2])
def test_a_broad_share_outside_the_open_interval_is_refused(share):
    with pytest.raises(ConfigError, match="broad_share: must be between 0 and 1"):
        UnlearnConfig(concept="striped", method="duge-on-uce", broad_share=share).validate()


def test_the_broad_share_is_the_broad_rows_share_of_a_preserve_batch():
    import torch

    from unlearning.data import preserve_weights

    weights = preserve_weights(world=150, broad=512, replay=12, broad_share=0.5)
    assert weights.shape == (674,)
    assert weights[150:662].sum().item() == pytest.approx(0.5)  # the broad rows, between the world's and the replay
    assert weights[:150].sum().item() + weights[662:].sum().item() == pytest.approx(0.5)
    assert weights[0].item() == pytest.approx(weights[-1].item())  # a world row and a replay row: alike
    drawn = torch.multinomial(weights, 20_000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert abs(((drawn >= 150) & (drawn < 662)).float().mean().item() - 0.5) < 0.02
    assert preserve_weights(world=150, broad=0, replay=12, broad_share=0.5) is None  # nothing to share with
    assert UnlearnConfig(concept="striped", method="duge-on-uce", broad_share=0.5).effective()["broad_share"] == 0.5
