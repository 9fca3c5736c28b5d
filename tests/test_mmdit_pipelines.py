"""SD3 and FLUX pipelines (MMDiT transformers) through Lethe's path, on tiny pipelines built from constructor
arguments with tokenizers made offline (tests/tiny_mmdit.py): the condition is what each pipeline's own
`encode_prompt` builds, the closed forms (uce, continual-uce) edit `text-proj` from it inside the one loop,
`generate` samples through the pipeline's own call, and the whole CLI path (unlearn → evaluate → register →
`load_pipeline` → export) keeps the transformer's edit. The edit itself on transformers alone: tests/test_mmdit.py."""

from __future__ import annotations

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
    folder that reloads to the same weights), the model card naming the base. The attack and the inversion
    diagnostics optimise through a UNet: the evaluation says they were not run. A smaller sweep than the
    settings' (8 vocabulary prompts, 2 variants, 1 seed): FLUX samples 128 x 128 images (its pipeline's
    default size), ~0.7 s an image on two shared CPU cores."""
    arch, folder = mmdit_base
    if (arch, method) == ("flux", "uce"):  # uce's MMDiT path is SD3's too; FLUX's 128 px run costs ~4 min in CI
        pytest.skip("uce on an MMDiT runs on SD3; FLUX runs the default (continual-uce) only")
    sweep = {"LETHE_EVAL_SWEEP_PROMPTS": "8", "LETHE_EVAL_SWEEP_VARIANTS": "2", "LETHE_EVAL_SWEEP_SEEDS": "1"}
    checks = unlearn_evaluate_register_load_and_export(arch, folder, tmp_path, method=method, settings=sweep)
    assert "attack" not in checks and "UNet" in checks["not_run"]["attack"]
