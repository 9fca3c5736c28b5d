"""SD3 and FLUX pipelines (MMDiT transformers) through Lethe's path, on tiny pipelines built from constructor
arguments with tokenizers made offline (tests/tiny_mmdit.py): the condition is what each pipeline's own
`encode_prompt` builds, the closed forms (uce, continual-uce) edit `text-proj` from it inside the one loop,
`generate` samples through the pipeline's own call, the evaluation's prompt attack runs through the flow-matching
loss and every encoder, and the whole CLI path (unlearn → evaluate → register → `load_pipeline` → export) keeps the
transformer's edit. The edit itself on transformers alone: tests/test_mmdit.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_architectures import _config, unlearn_evaluate_register_load_and_export
from tests.tiny_mmdit import SD3_JOINT, build_tiny_flux, build_tiny_sd3
from unlearning.delta import load_delta
from unlearning.loop import run_unlearning
from unlearning.sampling import generate, load_model
from unlearning.world import OpenWorld

BUILDERS = {"sd3": build_tiny_sd3, "flux": build_tiny_flux}
TEXT_PROJ = {"transformer.context_embedder.weight", "transformer.time_text_embed.text_embedder.linear_1.weight"}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def mmdit_base(request, tmp_path_factory):
    """(architecture, folder) of a tiny saved SD3 or FLUX pipeline."""
    folder = tmp_path_factory.mktemp(request.param) / "model"
    return request.param, BUILDERS[request.param](folder)


def test_the_condition_is_what_the_pipeline_s_own_encode_prompt_builds(mmdit_base):
    """SD3: CLIP-L's and CLIP-G's penultimate states (32 + 32) zero-padded to T5's 80 and joined with T5's 256
    tokens (77 + 256 = 333), the pooled both CLIPs' text_embeds (32 + 32 = 64); FLUX: T5's 512 tokens (32 wide),
    the pooled CLIP-L's pooler output (32) — equal to the pipeline's `encode_prompt`. The concept word is found
    in every part of the sequence (SD3: in CLIP's part and in T5's)."""
    from unlearning.conditioning import encode, segment_lengths, word_tokens

    arch, folder = mmdit_base
    pipe = load_model(folder)
    prompts = ["a photo of a cat", "a dog"]
    condition = encode(pipe, prompts)
    torch.set_grad_enabled(False)  # as `encode` runs (with gradients on, T5 takes other kernels: ~1e-5 apart)
    if arch == "sd3":
        expected, _, pooled, _ = pipe.encode_prompt(
            prompts, None, None, device="cpu", do_classifier_free_guidance=False
        )
        assert condition.hidden.shape == (2, 77 + 256, SD3_JOINT) and condition.pooled.shape == (2, 64)
        assert condition.hidden[:, :77, 64:].abs().max() == 0 and condition.hidden[:, :77, :64].abs().max() > 0
        clip_l = pipe.text_encoder(pipe.tokenizer(prompts, padding="max_length", return_tensors="pt").input_ids)
        torch.testing.assert_close(condition.pooled[:, :32], clip_l.text_embeds)
        assert segment_lengths(pipe) == (77, 256)
        clip_ids = pipe.tokenizer(prompts[0]).input_ids  # the tiny CLIP vocabulary spells "photo" letter by letter
        word = [clip_ids.index(pipe.tokenizer.convert_tokens_to_ids("cat</w>")), 77 + 4]  # T5: ▁a ▁photo ▁of ▁a ▁cat
    else:
        expected, pooled, _ = pipe.encode_prompt(prompts, None, device="cpu")
        assert condition.hidden.shape == (2, 512, 32) and condition.pooled.shape == (2, 32)
        assert segment_lengths(pipe) == (512,)
        word = [4]
    torch.testing.assert_close(condition.hidden, expected)
    torch.testing.assert_close(condition.pooled, pooled)
    assert word_tokens(pipe, prompts, ["cat", "dog"])[0].nonzero().flatten().tolist() == word
    assert encode(pipe, []).hidden.shape == (0, *condition.hidden.shape[1:])
    torch.set_grad_enabled(True)


@pytest.mark.parametrize("method", ["continual-uce", "uce"])
def test_a_closed_form_step_edits_the_text_projections_and_the_result_samples(mmdit_base, method, tmp_path):
    """Through `run_unlearning`: the delta holds exactly the transformer's `text-proj` weights (keys
    `transformer.…`, header params `text-proj`), both moved; on the request's own target prompts the edited
    transformer's output is (nearly) the base's on their anchor prompts — within a quarter of how far apart the
    base's two were (measured: 0.01–0.08; the tiny random encoders generalise little beyond the four pairs
    given); the edited pipeline samples uint8 images through its own call."""
    from unlearning.conditioning import encode

    arch, folder = mmdit_base
    pipe = load_model(folder)
    base = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    cfg = _config(method)
    prompts = OpenWorld().request_prompts(cfg)
    summary = run_unlearning(
        pipe, cfg, tmp_path / "run", prompts=prompts, model_sha="t", base_values=base, progress=False
    )
    delta, header = load_delta(tmp_path / "run" / "delta.safetensors")
    assert set(delta) == TEXT_PROJ and header["params"] == summary["params"] == "text-proj"
    assert header["method"] == method
    assert all(value.abs().max() > 0 for value in delta.values())

    target, anchor = encode(pipe, prompts.target), encode(pipe, prompts.anchor)
    unedited = load_model(folder).transformer
    batch = len(target)
    z = torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    if arch == "sd3":

        def call(model, c):
            return model(z, c.hidden, c.pooled, torch.full((batch,), 500.0)).sample

    else:  # FLUX packs 2 x 2 patches of its one latent channel: 8 x 8 tokens of 4
        z = pipe._pack_latents(z[:, :1], batch, 1, 16, 16)
        ids = pipe._prepare_latent_image_ids(batch, 8, 8, "cpu", torch.float32)

        def call(model, c):
            return model(
                z, c.hidden, c.pooled, torch.full((batch,), 0.5), img_ids=ids, txt_ids=torch.zeros(512, 3)
            ).sample

    with torch.no_grad():
        before = (call(unedited, target) - call(unedited, anchor)).norm()
        after = (call(pipe.transformer, target) - call(unedited, anchor)).norm()
    assert after < 0.25 * before, (float(after), float(before))

    images = generate(pipe, ["a photo of a cat", "a photo of a dog"], [0, 1], steps=2)
    size = 32 if arch == "sd3" else 128  # FluxPipeline's own default size with a one-block VAE
    assert images.shape == (2, size, size, 3) and images.dtype.name == "uint8" and images.std() > 0


def test_generate_draws_each_image_from_its_own_seed(mmdit_base):
    """Image k of (prompt, seed) is the same in any batch (up to one level of float rounding across batch
    sizes), and another seed gives another image."""
    _, folder = mmdit_base
    pipe = load_model(folder)
    pair = generate(pipe, ["a photo of a cat", "a dog"], [0, 1], steps=2).astype(int)
    alone = generate(pipe, ["a dog"], [1], steps=2).astype(int)
    other = generate(pipe, ["a dog"], [2], steps=2).astype(int)
    assert abs(pair[1] - alone[0]).max() <= 1
    assert abs(other[0] - alone[0]).mean() > 1


def test_a_loss_method_is_refused_in_one_line_before_anything_is_written(mmdit_base, tmp_path):
    """esd-x on a complete SD3 or FLUX pipeline: one ConfigError naming the method, the pipeline and its
    transformer; nothing written."""
    from unlearning.config import ConfigError

    _, folder = mmdit_base
    pipe = load_model(folder)
    cfg = _config("esd-x")
    with pytest.raises(ConfigError) as refused:
        run_unlearning(pipe, cfg, tmp_path / "run", prompts=None, model_sha="x", base_values={}, progress=False)
    message = str(refused.value)
    assert "\n" not in message and "method esd-x " in message, message
    assert f"{type(pipe).__name__} ({type(pipe.transformer).__name__})" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["continual-uce", "uce"])
def test_unlearn_evaluate_register_load_and_export_through_the_cli(mmdit_base, method, tmp_path):
    """The whole path on SD3 and FLUX, as tests/test_architectures.py runs it on SD2 and SDXL: `lethe unlearn`
    (the closed form on `text-proj`, then the evaluation with the sweep, judged by a tiny CLIP), `lethe evaluate`,
    register, `load_pipeline` (the pipeline's own class, the edited transformer, images), `lethe export` (a
    folder that reloads to the same weights), the model card naming the base. The evaluation attacks the concept
    (the flow-matching attack); the inversion diagnostics, a UNet's, are off in tests. A smaller sweep than the
    settings' (8 vocabulary prompts, 2 variants, 1 seed): FLUX samples 128 x 128 images (its pipeline's
    default size), ~0.7 s an image on two shared CPU cores."""
    arch, folder = mmdit_base
    if (arch, method) == ("flux", "uce"):  # uce's MMDiT path is SD3's too; FLUX's 128 px run costs ~4 min in CI
        pytest.skip("uce on an MMDiT runs on SD3; FLUX runs the default (continual-uce) only")
    sweep = {"LETHE_EVAL_SWEEP_PROMPTS": "8", "LETHE_EVAL_SWEEP_VARIANTS": "2", "LETHE_EVAL_SWEEP_SEEDS": "1"}
    checks = unlearn_evaluate_register_load_and_export(arch, folder, tmp_path, method=method, settings=sweep)
    assert "attack" in checks and checks["attack"]["cat"]["head"] == "object"
    assert "attack" not in checks.get("not_run", {})


SAMPLER = {"scheduler": "euler", "steps": 2, "guidance_scale": 5.0}
CAT = "a photo of a cat"


class _DrawnByTheBase:
    """A judge that sees "cat" in exactly the images the base draws through its own call (`generate`) for the
    cat prompts, on the seeds the attack samples them on (its x₀ seeds and its confirm seeds, each set in one
    call as the attack draws it): what "the base draws the concept as asked" means for a tiny random model, whose
    images no real judge recognises. The match is bit-exact (`decode_latents` is the pipeline's own decoding), so
    an image decoded from the wrong latents (FLUX's packing, the VAE's shift), drawn for another prompt or by
    another model is "other"."""

    heads = {"object": ("cat", "other")}

    def __init__(self, pipe, prompts: list[str], budget):
        from unlearning.evaluation.attack import _seeds

        steps, guidance = SAMPLER["steps"], SAMPLER["guidance_scale"]
        drawn = []
        for prompt in prompts:
            for seeds in (_seeds(prompt, budget.batch * 2, 10_000), _seeds(prompt, budget.confirm_seeds, 100)):
                drawn.append(generate(pipe, [prompt] * len(seeds), seeds, steps=steps, guidance_scale=guidance))
        self.references = np.concatenate(drawn)

    def probabilities(self, images):
        seen = np.array([any(np.array_equal(image, ref) for ref in self.references) for image in images])
        return {"object": np.stack([seen, ~seen], axis=1).astype(float)}


def _budget():
    from unlearning.evaluation.attack import AttackBudget

    return AttackBudget(prompts=2, tokens=2, steps=2, batch=2, check_every=2, check_seeds=1, confirm_seeds=2)


@pytest.mark.parametrize("variant", ["unlearndiffatk", "p4d"])
def test_the_attack_loss_is_finite_and_its_gradient_reaches_the_words_through_every_encoder(
    mmdit_base, variant, monkeypatch
):
    """The search runs over words every tokenizer types as one token (CLIP and T5 alike); the relaxed condition's
    forward is the typed prompt's `encode` (the straight-through rows are the chosen words' own); the flow-matching
    loss (UnlearnDiffAtk's ‖(ε − x₀) − v_θ‖², P4D's ‖v_θ₀ − v_θ‖² against the base under the plain prompt, here
    another model: the base with a perturbed `context_embedder`) is finite, and its gradient reaches the simplex
    weights and, at the k prepended positions, the relaxed input embeddings of every encoder (SD3: CLIP-L, CLIP-G,
    T5; FLUX: CLIP-L, T5)."""
    from unlearning.conditioning import encode, text_pairs
    from unlearning.evaluation import attack

    arch, folder = mmdit_base
    pipe, base = load_model(folder), load_model(folder)
    with torch.no_grad():
        base.transformer.context_embedder.weight.mul_(0.5)
    words, columns = attack._shared_vocabulary(attack._tokenizers(pipe))
    assert "cat" in words and len(columns) == len({id(t) for t, _ in text_pairs(pipe)})
    for tokenizer, _ in text_pairs(pipe):
        assert all(len(tokenizer(word, add_special_tokens=False).input_ids) == 1 for word in words)

    generator = torch.Generator().manual_seed(0)
    w = attack._project_simplex(torch.rand(2, len(words), generator=generator)).requires_grad_(True)
    one_hot = torch.nn.functional.one_hot(w.argmax(dim=-1), len(words)).float()
    condition, text = attack.adversarial_condition(pipe, one_hot + w - w.detach(), CAT)
    typed = encode(pipe, [text])
    assert text.endswith(CAT) and len(text.removesuffix(CAT).split()) == 2
    torch.testing.assert_close(condition.hidden, typed.hidden, atol=1e-4, rtol=1e-4)  # T5: other kernels with grad
    torch.testing.assert_close(condition.pooled, typed.pooled, atol=1e-4, rtol=1e-4)

    relaxed = {}  # each encoder's given input embeddings, as the attack hands them to encode_inputs
    real_encode_inputs = attack.encode_inputs

    def recording(pipe_, inputs, text=None):
        def record(tokenizer, table):
            ids, embeds = inputs(tokenizer, table)
            relaxed[table] = (tokenizer, embeds)
            return ids, embeds

        return real_encode_inputs(pipe_, record, text)

    monkeypatch.setattr(attack, "encode_inputs", recording)
    shape = (2, 4, 16, 16) if arch == "sd3" else (2, 64 * 64, 4)  # FLUX: 128 x 128 latents of 1 channel, packed
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    original = encode(base, [CAT]).repeat(2) if variant == "p4d" else None
    loss, _ = attack.attack_loss(
        pipe, base, w, prompt=CAT, x0=x0, variant=variant, generator=generator, sampler=SAMPLER, original=original
    )
    assert torch.isfinite(loss) and loss > 0
    embeds = [embeds for _, embeds in relaxed.values()]
    assert len(embeds) == len(text_pairs(pipe))  # every encoder got relaxed words
    gradients = torch.autograd.grad(loss, [w, *embeds])
    assert torch.isfinite(gradients[0]).all() and gradients[0].abs().max() > 0
    for (tokenizer, _), gradient in zip(relaxed.values(), gradients[1:]):
        start = 1 if tokenizer is pipe.tokenizer else 0  # after CLIP's BOS; T5 starts with the first word
        assert gradient[0, start : start + 2].abs().max() > 0, type(tokenizer).__name__


def test_on_the_base_the_attack_finds_the_concept_at_once(mmdit_base):
    """As on a UNet base (tests/test_attack.py): the base draws cat as asked, so its phrasing succeeds before any
    search, ASR 1 of 1, the images are the base's own; "a photo of a dog", which the base does not draw as cat, is
    not tried (no x₀: its latents decode to no cat). x₀ and those images come through the pipeline's own call
    (`mmdit_latents`, `decode_latents`): the judge sees cat only in the bit-exact images `generate` draws."""
    from unlearning.evaluation.attack import attack_concept

    _, folder = mmdit_base
    pipe, budget = load_model(folder), _budget()
    judge = _DrawnByTheBase(pipe, [CAT], budget)
    prompts = ["a photo of a dog", CAT]
    results, images = attack_concept(
        pipe, pipe, judge, head="object", concept="cat", prompts=prompts, budget=budget, sampler=SAMPLER
    )
    assert (results["n"], results["k"], results["asr"], results["before"]) == (1, 1, 1.0, 1.0)
    assert [row["prompt"] for row in results["prompts"]] == [CAT]
    assert all(not row["attacks"] for row in results["prompts"])  # drawn as asked: nothing to optimise
    assert results["base"] == {"asr": 1.0, "k": 1, "n": 1}
    assert set(images) == {CAT} and judge.probabilities(images[CAT][1])["object"][:, 0].all()


def test_the_evaluation_attacks_an_mmdit_candidate(mmdit_base):
    """`probe` runs the attack on SD3 and FLUX (before: `not_run["attack"]`, and an MMDiT could never pass a gate
    that requires `attack.*.asr`): against a candidate whose `context_embedder` is zeroed (it no longer draws the
    base's cat), the phrasing fails as asked, both searches run their budget on typed words, ASR 0 of 1 while the
    base's is 1 of 1. Only the inversion diagnostics, a UNet's, are reported as not run."""
    from unlearning.evaluation.evaluate import Probes, probe
    from unlearning.evaluation.plan import EvaluationPlan, PlanSize, PromptCase

    _, folder = mmdit_base
    base, candidate, budget = load_model(folder), load_model(folder), _budget()
    with torch.no_grad():
        candidate.transformer.context_embedder.weight.zero_()
    judge = _DrawnByTheBase(base, [CAT], budget)
    case = PromptCase(group="forget/gate", concept="cat", domain="object", attributes=(), prompt=CAT, seed=0)
    plan = EvaluationPlan(target="cat", synonyms=(), erased=(), size=PlanSize(), cases=(case,))
    probes = Probes(sweep=None, attack=budget, heads={"cat": "object"}, names={"cat": ("cat",)}, diagnostics=True)
    results, _, _, seconds = probe(
        candidate, base, judge, plan, probes, sampler=SAMPLER, base_sha256="0" * 64, cache=None
    )
    assert set(results["not_run"]) == {"diagnostics"} and "diagnostics" not in results
    attacked = results["attack"]["cat"]
    assert (attacked["n"], attacked["k"], attacked["asr"]) == (1, 0, 0.0)
    assert attacked["base"] == {"asr": 1.0, "k": 1, "n": 1} and seconds["attack_seconds"] > 0
    (row,) = attacked["prompts"]
    assert row["prompt"] == CAT and not row["success_before"]
    assert [a["variant"] for a in row["attacks"]] == ["unlearndiffatk", "p4d"]
    for result in row["attacks"]:
        assert result["steps"] == 2 and result["checks"] == 1 and not result["success"]
        assert np.isfinite(result["final_loss"])
        words = result["adversarial_prompt"].removesuffix(CAT).split()
        assert len(words) == 2 and all(word.isalpha() for word in words)  # two typed words prepended


def test_the_transformer_is_called_as_its_pipeline_calls_it(mmdit_base):
    """`conditioned_mmdit` at the pipeline's first σ, on the latents and with the condition of the prompt, gives
    the velocity the pipeline's own loop computed there (SD3: t = σ T; FLUX: t / 1000, packed latents, img_ids and
    txt_ids): recorded from the transformer's forward during a call (guidance 1: SD3 without its CFG batch)."""
    from unlearning.conditioning import conditioned_mmdit, encode

    _, folder = mmdit_base
    pipe = load_model(folder)
    seen = []
    handle = pipe.transformer.register_forward_hook(
        lambda module, args, kwargs, output: seen.append((kwargs["hidden_states"], output[0])), with_kwargs=True
    )
    with torch.no_grad():
        pipe([CAT], num_inference_steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    handle.remove()
    latents, expected = seen[0]
    sigma = pipe.scheduler.sigmas[:1]  # the call's first noise level (FLUX's shifted by its image size)
    with torch.no_grad():
        velocity = conditioned_mmdit(pipe, pipe.transformer, 1.0)(latents, sigma, encode(pipe, [CAT])).sample
    assert velocity.shape == latents.shape and expected.abs().max() > 0
    torch.testing.assert_close(velocity, expected)
    with torch.no_grad():  # and the time matters: another σ, another velocity
        other = conditioned_mmdit(pipe, pipe.transformer, 1.0)(latents, sigma / 2, encode(pipe, [CAT])).sample
    assert (other - expected).abs().max() > 1e-3


def test_the_flow_matching_noising_by_hand():
    """x_σ = (1 − σ) x₀ + σ ε and the target ε − x₀ (x₀ = 1, ε = 3: x_σ = 1 + 2σ, target 2), σ drawn per row
    from the scheduler's training grid — SD3's shifted by 3 (σ' = 3σ / (1 + 2σ)), not the sampling steps a
    pipeline call leaves in `scheduler.sigmas`."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from unlearning.evaluation.flow import flow_noised, training_sigmas

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(2)  # as a pipeline call leaves it
    grid = training_sigmas(scheduler)
    plain = torch.linspace(1000, 1, 1000) / 1000
    torch.testing.assert_close(grid, 3 * plain / (1 + 2 * plain))
    x0, noise = torch.ones(64, 2, 2), torch.full((64, 2, 2), 3.0)
    noisy, sigma, target = flow_noised(scheduler, x0, noise, torch.Generator().manual_seed(0))
    assert sigma.shape == (64,) and len(sigma.unique()) > 32 and torch.isin(sigma, grid).all()
    torch.testing.assert_close(noisy, 1 + 2 * sigma.view(-1, 1, 1).expand(-1, 2, 2))
    torch.testing.assert_close(target, torch.full((64, 2, 2), 2.0))
