"""SD2.x (v-prediction) and SDXL through an unlearning step and sampling, on tiny pipelines built from
diffusers' dummy-component sizes (tests/tiny_models.py) with a CLIP BPE tokenizer the test writes: the
conditioning each architecture's UNet reads (unlearning/conditioning.py), the closed form on SDXL's
concatenated 64-wide cross-attention, and the loss methods' targets under v-prediction."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import UNJUDGED, build_tiny_sd2, build_tiny_sdxl
from unlearning.config import UnlearnConfig
from unlearning.delta import load_delta
from unlearning.loop import run_unlearning
from unlearning.sampling import generate, load_model
from unlearning.world import OpenWorld

BUILDERS = {"sd2": build_tiny_sd2, "sdxl": build_tiny_sdxl}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def arch_base(request, tmp_path_factory):
    """(architecture, folder) of a tiny saved pipeline of each architecture."""
    folder = tmp_path_factory.mktemp(request.param) / "model"
    return request.param, BUILDERS[request.param](folder)


def _config(method: str, **fields) -> UnlearnConfig:
    if method == "continual-uce":  # run_unlearning is given no judge here: the judged screen off
        fields = {"hyper": UNJUDGED, **fields}
    return UnlearnConfig(
        concept="cat",
        anchor="animal",
        preserve=("dog",),
        method=method,
        prompts_per_concept=4,
        prefixed_prompts=4,  # as many as the plain pairs, as the shipped default's 80 and 80
        preserve_per_concept=2,
        broad_prompts=0,
        batch_size=2,
        data_steps=2,
        **fields,
    )


def _unlearn(folder, cfg, out):
    pipe = load_model(folder)
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    summary = run_unlearning(
        pipe,
        cfg,
        out,
        prompts=OpenWorld().request_prompts(cfg),
        model_sha="tiny",
        base_values=base,
        progress=False,
    )
    return pipe, base, summary


@pytest.mark.parametrize("method", ["continual-uce", "duge"])
def test_a_step_edits_every_cross_attention_k_v_and_the_result_samples(arch_base, method, tmp_path):
    """The step runs on the architecture's own conditioning (SDXL before conditioning.py: `mat1 and mat2
    shapes cannot be multiplied`, one encoder's 32-wide states fed to 64-wide K/V), changes every attn2
    to_k/to_v and nothing else, and the edited pipeline samples through its own pipeline class."""
    arch, folder = arch_base
    cfg = _config(method, **({"steps": 2} if method == "duge" else {}))
    pipe, base, summary = _unlearn(folder, cfg, tmp_path / "run")
    delta, header = load_delta(tmp_path / "run" / "delta.safetensors")
    kv = {f"unet.{n}" for n in base if ".attn2.to_k." in n or ".attn2.to_v." in n}
    assert set(delta) == kv and header["method"] == method
    assert all(delta[k].abs().max() > 0 for k in kv), "every cross-attention K/V must move"
    width = 64 if arch == "sdxl" else 32  # SDXL: both encoders' penultimate states, concatenated
    assert all(value.shape[1] == width for value in delta.values())
    images = generate(pipe, ["a photo of a cat", "a photo of a dog"], [0, 1], steps=2)
    assert images.shape == (2, 32, 32, 3) and images.dtype.name == "uint8" and images.std() > 0


def test_the_condition_is_what_the_architecture_s_own_pipeline_encodes(arch_base):
    """`encode` equals diffusers' `encode_prompt`: SD2's one encoder's last hidden state; SDXL's two
    encoders' penultimate states concatenated (64 wide), the second's pooled `text_embeds`, and the time ids
    its pipeline adds (size, no crop, size). A UNet call with the condition is the pipeline's own call."""
    from unlearning.conditioning import conditioned, encode

    arch, folder = arch_base
    pipe = load_model(folder)
    prompts = ["a photo of a cat", "a dog"]
    condition = encode(pipe, prompts)
    z, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 700])
    if arch == "sd2":
        expected, _ = pipe.encode_prompt(prompts, "cpu", 1, do_classifier_free_guidance=False)
        assert condition.pooled is None and condition.hidden.shape == (2, 77, 32)
        torch.testing.assert_close(condition.hidden, expected)
        own = pipe.unet(z, t, encoder_hidden_states=expected).sample
    else:
        expected, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
        size = pipe.default_sample_size * pipe.vae_scale_factor
        ids = pipe._get_add_time_ids(
            (size, size), (0, 0), (size, size), torch.float32, pipe.text_encoder_2.config.projection_dim
        ).expand(2, -1)
        assert condition.hidden.shape == (2, 77, 64) and condition.pooled.shape == (2, 32)
        torch.testing.assert_close(condition.hidden, expected)
        torch.testing.assert_close(condition.pooled, pooled)
        torch.testing.assert_close(condition.time_ids, ids)
        own = pipe.unet(
            z, t, encoder_hidden_states=expected, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}
        )
        own = own.sample
    torch.testing.assert_close(conditioned(pipe.unet)(z, t, condition).sample, own)
    assert encode(pipe, []).hidden.shape == (0, 77, condition.hidden.shape[-1])


def test_the_loss_methods_get_the_velocity_as_target_under_v_prediction(arch_base, tmp_path, monkeypatch):
    """Every step's `forget_target` / `preserve_target` is what the scheduler's UNet predicts: for SD2's
    v-prediction the velocity v = √ᾱ ε − √(1−ᾱ) z_0 (diffusers' `get_velocity`), not the noise ε; for SDXL
    (ε-prediction) the noise. z_0 is recovered from z_t = √ᾱ z_0 + √(1−ᾱ) ε."""
    from unlearning.methods import duge

    arch, folder = arch_base
    seen = []
    real_loss = duge.loss

    def recording_loss(ctx):
        seen.append((ctx.forget_noisy, ctx.forget_noise, ctx.forget_timesteps, ctx.forget_target))
        seen.append((ctx.preserve_noisy, ctx.preserve_noise, ctx.preserve_timesteps, ctx.preserve_target))
        return real_loss(ctx)

    monkeypatch.setattr(duge, "loss", recording_loss)
    pipe, _, _ = _unlearn(folder, _config("duge", steps=2), tmp_path / "run")
    scheduler = pipe.scheduler
    assert len(seen) == 4
    for noisy, noise, t, target in seen:
        a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        z0 = (noisy - (1 - a).sqrt() * noise) / a.sqrt()
        if arch == "sd2":
            assert scheduler.config.prediction_type == "v_prediction"
            torch.testing.assert_close(target, scheduler.get_velocity(z0, noise, t), rtol=1e-4, atol=1e-4)
            assert (target - noise).abs().max() > 0.1
        else:
            assert torch.equal(target, noise)


def test_prediction_targets_by_hand():
    """x_0 = 1, ε = 2, ᾱ = 0.64: ε-prediction 2; v = 0.8·2 − 0.6·1 = 1.0; sample-prediction 1."""
    from unlearning.conditioning import prediction_target
    from unlearning.config import ConfigError

    x0, eps, a = torch.ones(1), torch.full((1,), 2.0), torch.full((1,), 0.64)
    torch.testing.assert_close(prediction_target("epsilon", a, x0, eps), eps)
    torch.testing.assert_close(prediction_target("v_prediction", a, x0, eps), torch.tensor([1.0]))
    torch.testing.assert_close(prediction_target("sample", a, x0, eps), x0)
    with pytest.raises(ConfigError, match="prediction_type 'flow'"):
        prediction_target("flow", a, x0, eps)


def _tiny_sd3():
    """An SD3 pipeline of one tiny transformer and nothing else (diffusers' dummy sizes)."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=16,
        out_channels=4,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=None,
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )


@pytest.mark.parametrize("method", ["esd-x", "duge-on-uce"])
def test_a_loss_method_on_a_transformer_pipeline_is_refused_in_one_line_before_anything_is_written(method, tmp_path):
    """SD3 (an MMDiT `transformer`, no UNet) has no attn2 for a loss method: one ConfigError naming the method,
    the pipeline and its denoiser; no output folder. (The closed forms run there: tests/test_mmdit_pipelines.py.)"""
    from unlearning.config import ConfigError

    pipe = _tiny_sd3()
    cfg = _config(method)
    with pytest.raises(ConfigError) as refused:
        run_unlearning(pipe, cfg, tmp_path / "run", prompts=None, model_sha="x", base_values={}, progress=False)
    message = str(refused.value)
    assert "\n" not in message
    assert f"method {method} " in message and "StableDiffusion3Pipeline (SD3Transformer2DModel)" in message
    assert not (tmp_path / "run").exists()


def test_given_input_embeddings_go_through_every_encoder_s_own_forward(arch_base):
    """`encode_inputs` with each encoder's own rows for the prompt's ids is `encode` of the prompt (the
    pooled EOS position too), and the condition is differentiable in the given embeddings: what the
    attack and textual inversion optimise (transformers' CLIP text models take no `inputs_embeds`)."""
    from unlearning.conditioning import encode, encode_inputs

    _, folder = arch_base
    pipe = load_model(folder)
    scale = torch.ones((), requires_grad=True)

    def inputs(tokenizer, table):
        ids = tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        return ids, table(ids) * scale

    condition = encode_inputs(pipe, inputs)
    expected = encode(pipe, ["a photo of a cat"])
    torch.testing.assert_close(condition.hidden, expected.hidden)
    if expected.pooled is not None:
        torch.testing.assert_close(condition.pooled, expected.pooled)
    (gradient,) = torch.autograd.grad(condition.hidden.pow(2).sum(), scale)
    assert gradient.abs() > 0


@pytest.mark.parametrize("variant", ["unlearndiffatk", "p4d"])
def test_the_prompt_attack_runs_on_every_architecture(arch_base, variant):
    """The gate's discrete attack (UnlearnDiffAtk, P4D) optimises prepended words through the architecture's
    own encoders and UNet conditioning; before conditioning.py it called `text_encoder(inputs_embeds=...)`,
    which a CLIP text model refuses, and the UNet without SDXL's added conditions."""
    from tests.test_attack import _NeverSees
    from unlearning.evaluation.attack import AttackBudget, optimise_prompt

    _, folder = arch_base
    pipe = load_model(folder)
    x0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    budget = AttackBudget(tokens=3, steps=4, batch=2, check_every=2, check_seeds=1, confirm_seeds=1)
    result = optimise_prompt(
        pipe,
        pipe,
        _NeverSees(),
        head="object",
        concept="circle",  # the stub judge's class: it sees nothing anyway
        prompt="a photo of a cat",
        x0=x0,
        variant=variant,
        budget=budget,
        sampler={"steps": 2, "guidance_scale": 2.0},
    )
    assert result["steps"] == 4 and result["checks"] == 2 and not result["success"]
    assert torch.isfinite(torch.tensor(result["final_loss"]))
    words = result["adversarial_prompt"].removesuffix("a photo of a cat").split()
    assert len(words) == 3 and all(w.isalpha() for w in words)  # three typeable words prepended


def test_the_inversion_diagnostics_run_on_every_architecture(arch_base):
    """RECE's embedding inversion (the K/V-space inverse, sampled with SDXL's pooled embedding and time ids
    of the base's prompt) and a textual inversion (one learnt row per encoder, through each encoder's own
    forward) run on the tiny pipelines: a K/V edit is inverted to a residual ≈ 0 on an unedited model."""
    from tests.test_attack import _NeverSees
    from unlearning.evaluation.inversion import embedding_inversion, textual_inversion

    _, folder = arch_base
    pipe = load_model(folder)
    sampler = {"steps": 2, "guidance_scale": 2.0}
    inverted = embedding_inversion(
        pipe,
        pipe,
        _NeverSees(),
        head="object",
        concept="circle",
        prompts=["a photo of a cat"],
        reference_prompts=["a photo of a dog"],
        sampler=sampler,
        seeds_per_prompt=2,
    )
    assert inverted["n"] == 2 and inverted["draws"] == 0.0 and inverted["residual"] < 0.05
    x0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    learnt = textual_inversion(
        pipe, x0, _NeverSees(), head="object", concept="circle", sampler=sampler, steps=3, seeds=2
    )
    assert learnt["n"] == 2 and learnt["steps"] == 3 and torch.isfinite(torch.tensor(learnt["final_loss"]))


PIPELINE_CLASSES = {
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
}


@pytest.mark.slow
def test_unlearn_evaluate_register_load_and_export_through_the_cli(arch_base, tmp_path):
    """The whole path a user takes, on an open-world base judged by a tiny CLIP: `lethe unlearn` (continual-uce
    on the architecture's conditioning, then the evaluation with the sweep and the attack), `lethe evaluate`
    of the folder, the version registered, `load_pipeline` (the architecture's own pipeline class, the
    edited K/V, images) and `lethe export` (a diffusers folder of the same class that reloads to the same
    weights), with the model card naming the base."""
    arch, folder = arch_base
    checks = unlearn_evaluate_register_load_and_export(arch, folder, tmp_path, method="continual-uce")
    assert "attack" in checks and checks["attack"]["cat"]["head"] == "object"


def unlearn_evaluate_register_load_and_export(
    arch: str, folder, tmp_path, *, method: str, settings: dict[str, str] | None = None
) -> dict:
    """`lethe unlearn --method <method>` → `lethe evaluate` → register → `load_pipeline` (and the version's
    pyfunc) → `lethe export` on the
    base `folder` (test above; tests/test_mmdit_pipelines.py for SD3 and FLUX), with `settings` as LETHE_*
    variables over the test's own; returns the unlearn step's evaluation checks. The delta's tensors are the
    denoiser's (`unet`, or an MMDiT's `transformer`)."""
    import json
    import os
    import subprocess
    import sys

    import mlflow
    import numpy as np
    from diffusers import DiffusionPipeline

    from registry.loading import load_pipeline
    from registry.versions import Candidate, ModelRegistry
    from tests.test_clip_judge import tiny_clip
    from unlearning.delta import denoiser, denoiser_component
    from unlearning.sampling import model_identity

    (tmp_path / "clip").mkdir()
    tiny_clip(tmp_path / "clip")
    home = tmp_path / ".lethe"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "LETHE_HOME": str(home),
        "LETHE_WORLD": "open",
        "LETHE_JUDGE_MODEL": str(tmp_path / "clip"),
        "LETHE_BASE_MODEL": str(folder),
        "LETHE_MODEL_NAME": f"tiny-{arch}",
        "LETHE_SAMPLE_STEPS": "2",
        **(settings or {}),
    }
    env.pop("LETHE_CONFIG", None)

    def lethe(*args):
        result = subprocess.run(
            [sys.executable, "-m", "flows.cli", *args, "--json"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout)

    unlearned = lethe("unlearn", "--concept", "cat", "--preserve", "dog", "--anchor", "animal", "--eval-samples", "4",
                      "--method", method, "--out", "ul")  # fmt: skip
    checks = unlearned["evaluation"]["checks"]
    assert {"forget", "retain", "sweep"} <= set(checks)
    evaluated = lethe("evaluate", "--model", "ul", "--target", "cat", "--samples", "4")
    assert evaluated["checks"]["forget"] and evaluated["base_model"] == str(folder)

    _, base_sha = model_identity(folder)
    registry = ModelRegistry(f"sqlite:///{(home / 'mlflow.db').resolve()}", f"tiny-{arch}", str(home / "artifacts"))
    lineage = tmp_path / "ul" / "lineage.safetensors"
    version = registry.register_candidate(
        Candidate(
            request_id="r1",
            request={"concept": "cat", "requester": "alice"},
            delta_path=tmp_path / "ul" / "delta.safetensors",
            parent_version=None,
            erased=["cat"],
            base_model=str(folder),
            base_sha256=base_sha,
            params={"method": method},
            metrics={},
            gate_passed=False,
            gate_reasons=["tiny"],
            extra_files={"lineage.safetensors": lineage} if lineage.is_file() else {},
        )
    )
    card = next((home / "artifacts").rglob("README.md"), None) or next((home / "artifacts").rglob("*card*.md"))
    assert f"base_model: {folder}" in card.read_text()

    pipe = load_pipeline(f"models:/tiny-{arch}/{version}", tracking_uri=f"sqlite:///{(home / 'mlflow.db').resolve()}")
    assert type(pipe).__name__ == PIPELINE_CLASSES[arch]
    base = load_model(folder)
    delta, _ = load_delta(tmp_path / "ul" / "delta.safetensors")
    assert delta and {key.split(".", 1)[0] for key in delta} == {denoiser_component(base)}
    loaded, original = dict(denoiser(pipe).named_parameters()), dict(denoiser(base).named_parameters())
    for key, value in delta.items():
        name = key.split(".", 1)[1]
        assert value.abs().max() > 0, key
        torch.testing.assert_close(loaded[name], original[name] + value)
    images = generate(pipe, ["a photo of a cat"], [0], steps=2)
    assert images.shape == generate(base, ["a cat"], [0], steps=2).shape
    mlflow.set_tracking_uri(f"sqlite:///{(home / 'mlflow.db').resolve()}")  # the pyfunc loads from the registry
    served = mlflow.pyfunc.load_model(f"models:/tiny-{arch}/{version}").predict(["a photo of a cat"], {"steps": 2})
    assert np.array_equal(served, images)  # seed 0, guidance 5: `generate`'s defaults

    exported = lethe("export", str(version), "exported")
    assert exported["version"] == version and exported["erased"] == ["cat"]
    again = DiffusionPipeline.from_pretrained(tmp_path / "exported", local_files_only=True)
    assert type(again).__name__ == PIPELINE_CLASSES[arch]
    for name, value in loaded.items():
        torch.testing.assert_close(dict(denoiser(again).named_parameters())[name], value)
    return checks
