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
    assert effective["prefixed_prompts"] == continual_uce.PREFIXED_PROMPTS  # the method's, recorded
    assert UnlearnConfig(concept="circle", method="duge").prefixed_prompts == 0  # a method without any
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


def test_a_negative_count_of_prefixed_pairs_is_refused_and_an_unknown_method_named():
    with pytest.raises(ConfigError, match="prefixed_prompts: must be >= 0"):
        UnlearnConfig(concept="circle", prefixed_prompts=-1).validate()
    with pytest.raises(ConfigError, match="method: .*frobnicate"):
        UnlearnConfig(concept="circle", method="frobnicate").validate()  # its options stay unresolved


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


def test_the_operator_s_data_steps_reach_a_request_s_config(monkeypatch, tmp_path):
    """`LETHE_UNLEARN_DATA_STEPS` (the parent's sampler steps while unlearning: a loss method's images, the judged
    screen) sets the config pipeline/prepare.py builds for a request; unset, the loop's default (20) stays."""
    from pipeline.prepare import unlearn_config
    from pipeline.settings import LetheSettings
    from pipeline.values import Parent
    from registry.requests import RequestSpec

    request, parent = RequestSpec(concept="circle", requester="test"), Parent(version=None)
    monkeypatch.setenv("LETHE_HOME", str(tmp_path))
    assert unlearn_config(LetheSettings(), request, parent).data_steps == 20
    monkeypatch.setenv("LETHE_UNLEARN_DATA_STEPS", "3")
    assert unlearn_config(LetheSettings(), request, parent).data_steps == 3
