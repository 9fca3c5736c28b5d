"""SD3 and FLUX pipelines (MMDiT transformers) through Lethe's path, on tiny pipelines built from constructor
arguments with tokenizers made offline (tests/tiny_mmdit.py): the condition is what each pipeline's own
`encode_prompt` builds, the closed forms (uce, continual-uce) edit `text-proj` from it inside the one loop,
`generate` samples through the pipeline's own call, the evaluation's prompt attack runs through the flow-matching
loss and every encoder, so do the inversion diagnostics (RECE's closed form over the text projections, a textual
inversion with one vector per encoder), and the whole CLI path (unlearn → evaluate → register → `load_pipeline` →
export) keeps the transformer's edit. The edit itself on transformers alone: tests/test_mmdit.py."""

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
    (the flow-matching attack); the inversion diagnostics are off in tests (`probe` runs them: the tests of
    inversion.py below). A smaller sweep than the
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


def _probe_a_zeroed_candidate(mmdit_base, *, attack: bool, diagnostics: bool) -> tuple[dict, dict]:
    """`probe` of one cat phrasing on a candidate whose `context_embedder` is zeroed (it no longer draws the base's
    cat), judged by `_DrawnByTheBase`: (results, seconds)."""
    from unlearning.evaluation.evaluate import Probes, probe
    from unlearning.evaluation.plan import EvaluationPlan, PlanSize, PromptCase

    _, folder = mmdit_base
    base, candidate, budget = load_model(folder), load_model(folder), _budget()
    with torch.no_grad():
        candidate.transformer.context_embedder.weight.zero_()
    judge = _DrawnByTheBase(base, [CAT], budget)
    case = PromptCase(group="forget/gate", concept="cat", domain="object", attributes=(), prompt=CAT, seed=0)
    plan = EvaluationPlan(target="cat", synonyms=(), erased=(), size=PlanSize(), cases=(case,))
    probes = Probes(
        sweep=None,
        attack=budget if attack else None,
        heads={"cat": "object"},
        names={"cat": ("cat",)},
        diagnostics=diagnostics,
    )
    results, _, _, seconds = probe(
        candidate, base, judge, plan, probes, sampler=SAMPLER, base_sha256="0" * 64, cache=None
    )
    return results, seconds


def test_the_evaluation_attacks_an_mmdit_candidate(mmdit_base):
    """`probe` runs the attack on SD3 and FLUX (before: `not_run["attack"]`, and an MMDiT could never pass a gate
    that requires `attack.*.asr`): against a candidate whose `context_embedder` is zeroed (it no longer draws the
    base's cat), the phrasing fails as asked, both searches run their budget on typed words, ASR 0 of 1 while the
    base's is 1 of 1. Nothing is reported as not run (the diagnostics: the next tests)."""
    results, seconds = _probe_a_zeroed_candidate(mmdit_base, attack=True, diagnostics=False)
    assert "not_run" not in results and "diagnostics" not in results
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


def test_a_condition_samples_the_images_its_prompt_does(mmdit_base):
    """`generate_from_condition` on an MMDiT gives the pipeline's own call the condition as `prompt_embeds` and
    `pooled_prompt_embeds`: a prompt's own condition (`encode`) draws, bit for bit, the images `generate` draws for
    the prompt (SD3 with its classifier-free guidance against the empty prompt it builds itself), and another
    condition other images — what the inversions sample their embeddings with."""
    from unlearning.conditioning import encode
    from unlearning.sampling import generate_from_condition

    _, folder = mmdit_base
    pipe = load_model(folder)
    prompts, seeds = [CAT, "a dog"], [0, 1]
    drawn = generate(pipe, prompts, seeds, steps=2, guidance_scale=5.0)
    condition = encode(pipe, prompts)
    given = generate_from_condition(pipe, condition, seeds, steps=2, guidance_scale=5.0)
    assert np.array_equal(given, drawn)
    other = generate_from_condition(pipe, condition[[1, 0]], seeds, steps=2, guidance_scale=5.0)
    assert not np.array_equal(other, drawn)  # the tiny FLUX reads its text faintly: ~0.7 levels apart on average


def _perturbed(linear: torch.nn.Linear, seed: int) -> None:
    """Half the map's output rows zeroed (the base's outputs there are out of reach), noise on the rest and on the
    bias (so that b ≠ b₀ in the closed form)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        linear.weight.add_(0.5 * linear.weight.std() * torch.randn(linear.weight.shape, generator=generator))
        linear.weight[: len(linear.weight) // 2] = 0
        linear.bias.add_(0.5 * linear.bias.std() * torch.randn(linear.bias.shape, generator=generator))


def test_the_embedding_inversion_is_the_ridge_minimiser_over_the_text_projections(mmdit_base):
    """RECE's closed form over an MMDiT's `context_embedder` (the joint token rows) and its pooled projection (the
    pooled embedding): on candidate = base the whole diagnostic undoes nothing (residual ≈ 0 at the default ridge,
    ~0 as the ridge goes to 0) and samples the candidate with e′ and p′; on a candidate whose two maps lost half
    their rows, e′ is the least-squares solution of [W; √ρ I] e′ = [W₀ e + b₀ − b; 0] (a direct solve), the
    objective's gradient there is ≈ 0, and the residual is what that solution leaves (> 0: the zeroed rows)."""
    from unlearning.conditioning import encode
    from unlearning.evaluation import inversion

    _, folder = mmdit_base
    base, candidate = load_model(folder), load_model(folder)
    judge = _DrawnByTheBase(base, [CAT], _budget())
    same = inversion.embedding_inversion(
        base,
        base,
        judge,
        head="object",
        concept="cat",
        prompts=[CAT],
        reference_prompts=["a photo of a dog", "a cat"],
        sampler=SAMPLER,
    )
    assert same["residual"] < 0.05 and same["pooled_residual"] < 0.05, same
    assert same["n"] == 2 and 0 <= same["draws"] <= 1
    assert np.isfinite(same["nearest_real_token"]) and np.isfinite(same["pooled_nearest_real"])

    condition = encode(base, [CAT])
    spaces = {
        inversion.TOKEN_MAP: condition.hidden[0].double(),  # (T, D): every joint token row
        inversion.POOLED_MAP: condition.pooled.double(),  # (1, P)
    }
    for seed, (name, embeds) in enumerate(spaces.items()):
        own = [inversion._linear_map(base.transformer, base.transformer, name)]
        _, exact = inversion.ridge_inverse(own, embeds, ridge=1e-9)
        assert exact < 1e-10, (name, exact)

        _perturbed(candidate.transformer.get_submodule(name), seed)
        maps = [inversion._linear_map(candidate.transformer, base.transformer, name)]
        inverted, residual = inversion.ridge_inverse(maps, embeds, ridge=0.1)
        ((w, b, w0, b0),) = maps
        rho = 0.1 * float(torch.trace(w0.T @ w0)) / embeds.shape[1]
        target = embeds @ w0.T + b0 - b  # what W e′ must reach
        stacked = torch.cat([w, rho**0.5 * torch.eye(w.shape[1], dtype=torch.float64)])
        padded = torch.cat([target.T, torch.zeros(w.shape[1], len(embeds), dtype=torch.float64)])
        direct = torch.linalg.lstsq(stacked, padded).solution.T
        torch.testing.assert_close(inverted, direct, rtol=1e-7, atol=1e-9 * float(direct.abs().max()))
        gradient = 2 * (inverted @ w.T - target) @ w + 2 * rho * inverted
        assert gradient.norm() < 1e-8 * (2 * target @ w).norm(), name
        left = float((inverted @ w.T - target).pow(2).sum() / (embeds @ w0.T + b0).pow(2).sum())
        assert residual == pytest.approx(left, rel=1e-9) and residual > 0.05, (name, residual)


def test_textual_inversion_learns_one_vector_per_encoder_through_the_flow_loss(mmdit_base):
    """Gal et al.'s token on an MMDiT: "a animal" (one token in every tokenizer), one learnt vector per text encoder
    (SD3: CLIP-L, CLIP-G, T5; FLUX: CLIP-L, T5) at the word's position in each, starting as the typed prompt's
    condition; the flow-matching loss on the pipeline's own latents of the cat prompt sends a gradient to every
    encoder's vector; a few Adam steps lower the loss on the very draws they trained on (replayed from the seed),
    and move every vector."""
    from unlearning.conditioning import encode, text_pairs
    from unlearning.evaluation import inversion
    from unlearning.sampling import mmdit_latents

    arch, folder = mmdit_base
    pipe = load_model(folder)
    token = inversion.placeholder(pipe, "animal", "cat")
    assert token.word == "animal" and token.text == "a animal"
    assert token.positions == ((2, 2, 1) if arch == "sd3" else (2, 1))  # after CLIP's BOS and "a"; T5 has no BOS
    assert inversion.placeholder(pipe, "shape", "cat").word not in ("shape", "a", "cat")  # "shape": several tokens
    initial = inversion.initial_rows(pipe, token)
    assert len(initial) == len(text_pairs(pipe))
    typed = encode(pipe, [token.text])
    with torch.no_grad():
        start = inversion.learnt_condition(pipe, token, initial)
    torch.testing.assert_close(start.hidden, typed.hidden)
    torch.testing.assert_close(start.pooled, typed.pooled)

    x0 = mmdit_latents(pipe, [CAT] * 2, [0, 1], steps=2, guidance_scale=5.0).float()
    rows = [row.clone().requires_grad_(True) for row in initial]
    loss = inversion.denoising_loss(
        pipe, x0, inversion.learnt_condition(pipe, token, rows), torch.Generator().manual_seed(7), SAMPLER
    )
    gradients = torch.autograd.grad(loss, rows)
    for (tokenizer, _), gradient in zip(text_pairs(pipe), gradients):
        assert torch.isfinite(gradient).all() and gradient.abs().max() > 0, type(tokenizer).__name__

    steps = 4
    learnt, final = inversion.learn_token(pipe, x0, token, sampler=SAMPLER, steps=steps, lr=0.05, seed=0)

    def replayed(vectors):  # the mean loss over the draws `learn_token` made (its generator, re-seeded)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            condition = inversion.learnt_condition(pipe, token, vectors)
            return sum(float(inversion.denoising_loss(pipe, x0, condition, generator, SAMPLER)) for _ in range(steps))

    assert np.isfinite(final) and replayed(learnt) < replayed(initial)
    assert all((after - before).abs().max() > 0 for after, before in zip(learnt, initial))


def test_the_evaluation_runs_the_inversion_diagnostics_on_an_mmdit(mmdit_base, monkeypatch):
    """`probe` with diagnostics on an SD3 or FLUX candidate (before: `not_run["diagnostics"]`) reports both for the
    concept: RECE's inversion of its phrasing — against a candidate whose `context_embedder` is zeroed the token
    rows are out of reach (residual ≈ 1) while the untouched pooled projection is undone (≈ 0) — sampled on two
    seeds, and the textual inversion learnt on the base's latents of the phrasing (the base draws cat there),
    sampled on eight; nothing is reported as not run. The textual inversion takes 2 steps here (100 by default)."""
    from unlearning.evaluation import inversion

    monkeypatch.setattr(inversion, "TEXTUAL_INVERSION_STEPS", 2)
    results, seconds = _probe_a_zeroed_candidate(mmdit_base, attack=False, diagnostics=True)
    assert "not_run" not in results and set(results["diagnostics"]) == {"cat"}
    assert seconds["diagnostics_seconds"] > 0
    inverted, learnt = (
        results["diagnostics"]["cat"]["embedding_inversion"],
        results["diagnostics"]["cat"]["textual_inversion"],
    )
    assert inverted["n"] == 2 and inverted["residual"] > 0.5 and inverted["pooled_residual"] < 0.05, inverted
    assert inverted["nearest_real_token"] > 0 and inverted["pooled_nearest_real"] > 0
    assert learnt is not None and (learnt["n"], learnt["steps"]) == (8, 2) and np.isfinite(learnt["final_loss"])
    assert learnt["init_word"] not in ("cat", "shape") and 0 <= learnt["draws"] <= 1
