"""SD3 and FLUX (MMDiT transformers): continual-uce and uce edit the projections that see the text alone —
`context_embedder` (joint text tokens) and the pooled `time_text_embed.text_embedder.linear_1` — on tiny
transformers built from diffusers' test-dummy constructor arguments, with prompt embeddings passed in (no
pipeline, no tokenizer); every other method is refused in one line.

The embeddings are built so that an exact edit exists, which makes "erased" checkable on the transformer's
output: every prompt's tokens lie in a context subspace S (28 of the 32 token dimensions) except the concept
word's token, which adds 3·q_concept (q ⟂ S); the anchor prompt is the same prompt with 3·q_anchor there. The
map R = I + (q_anchor − q_concept) q_conceptᵀ sends every target token to its anchor token and fixes every
token in S (the preserve prompts'), so with a tiny λ the closed form finds it: context_embedder(target tokens)
= context_embedder₀(anchor tokens), hence the whole transformer's output under the target prompt equals the
base's under the anchor prompt (the text enters only through these two maps). The pooled embeddings are built
the same way in their own space (pooled_projection_dim wide)."""

from __future__ import annotations

import pytest
import torch

from unlearning.config import ConfigError
from unlearning.methods import METHOD_NAMES, get_method
from unlearning.methods.context import EditContext, EncodedPairs
from unlearning.model_folder import load_lineage, save_lineage
from unlearning.parameters import trainable_names

SD3 = {  # diffusers' SD3Transformer2DModel test dummy
    "sample_size": 32,
    "patch_size": 1,
    "in_channels": 4,
    "num_layers": 1,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "caption_projection_dim": 32,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 64,
    "out_channels": 4,
}
FLUX = {  # diffusers' FluxTransformer2DModel test dummy
    "patch_size": 1,
    "in_channels": 4,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "axes_dims_rope": [4, 4, 8],
}
TEXT_PROJ = ["time_text_embed.text_embedder.linear_1.weight", "context_embedder.weight"]
PROMPTS, TOKENS, FREE = 6, 8, 4  # prompts per set, tokens per prompt, dimensions outside the context subspace
EXACT = {"lambda_identity": 1e-6, "adversarial_rounds": 0}  # an exact edit exists (module docstring)


def build(kind: str):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(0)
    return (SD3Transformer2DModel(**SD3) if kind == "sd3" else FluxTransformer2DModel(**FLUX)).eval()


@torch.no_grad()
def denoise(kind: str, model, tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """One transformer call on fixed latents and timestep, conditioned on `tokens` (B, T, 32) and `pooled`."""
    generator = torch.Generator().manual_seed(1)
    batch = len(tokens)
    if kind == "sd3":
        latents = torch.randn(batch, 4, 4, 4, generator=generator)
        return model(latents, tokens, pooled, torch.full((batch,), 500.0)).sample
    latents = torch.randn(batch, 16, 4, generator=generator)  # packed: 4 x 4 patches of 4 channels
    image_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    return model(
        latents,
        tokens,
        pooled,
        torch.full((batch,), 0.5),
        img_ids=image_ids.reshape(-1, 3),
        txt_ids=torch.zeros(tokens.shape[1], 3),
    ).sample


class Space:
    """A `dim`-wide embedding space with a context subspace (its first dim − FREE basis vectors) and FREE
    directions outside it, each concept and anchor word one of them (module docstring)."""

    def __init__(self, dim: int, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.basis = torch.linalg.qr(torch.randn(dim, dim, generator=self.generator, dtype=torch.float64))[0].float()
        self.context = self.basis[:, : dim - FREE]

    def direction(self, index: int) -> torch.Tensor:
        return self.basis[:, -1 - index]

    def inside(self, *shape: int) -> torch.Tensor:
        """Random vectors of the context subspace."""
        return torch.randn(*shape, self.context.shape[1], generator=self.generator) @ self.context.T


def concept_prompts(tokens: Space, pooled: Space, concept: int, anchor: int) -> dict:
    """Target/anchor prompts differing in one word token (at positions 1..3) and their pooled embeddings."""
    context = tokens.inside(PROMPTS, TOKENS)
    words = torch.zeros(PROMPTS, TOKENS, dtype=torch.bool)
    words[torch.arange(PROMPTS), torch.arange(PROMPTS) % 3 + 1] = True
    target, anchored = context.clone(), context.clone()
    target[words] += 3 * tokens.direction(concept)
    anchored[words] += 3 * tokens.direction(anchor)
    pooled_context = pooled.inside(PROMPTS)
    return {
        "target_embeds": target,
        "anchor_embeds": anchored,
        "target_tokens": words,
        "anchor_tokens": words,
        "target_pooled": pooled_context + 3 * pooled.direction(concept),
        "anchor_pooled": pooled_context + 3 * pooled.direction(anchor),
    }


def world(kind: str) -> tuple[Space, Space]:
    return Space(32, seed=10), Space(SD3["pooled_projection_dim"] if kind == "sd3" else 32, seed=11)


def edit_context(model, base, prompts: dict, tokens: Space, pooled: Space, hyper: dict, **fields) -> EditContext:
    """What the loop would hand a closed form on an MMDiT: the `text-proj` weights and the prompts' embeddings."""
    trained = {name: param for name, param in model.named_parameters() if name in TEXT_PROJ}
    return EditContext(
        trained=trained,
        base_values={name: base[name] for name in trained},
        preserve_embeds=tokens.inside(4, TOKENS),
        replay_embeds=tokens.inside(0, TOKENS),
        preserve_pooled=pooled.inside(4),
        replay_pooled=pooled.inside(0),
        hyper=hyper,
        **prompts,
        **fields,
    )


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_text_proj_is_the_two_projections_that_see_the_text_alone(kind):
    """`text-proj` picks `context_embedder` and the pooled `linear_1` weights, not the blocks' add_k/add_v."""
    model = build(kind)
    assert sorted(trainable_names(model, "text-proj")) == sorted(TEXT_PROJ)


@pytest.mark.parametrize("method", ["continual-uce", "uce"])
@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_the_edit_maps_the_target_onto_the_anchor_and_the_transformer_still_runs(kind, method):
    """After the edit, context_embedder(target tokens) = context_embedder₀(anchor tokens) and linear_1(target
    pooled) = linear_1₀(anchor pooled) (residual ~0 with λ = 1e-6), the preserve prompts' tokens map as before,
    so the edited transformer's output under the target prompts is the base's under the anchor prompts — which
    differs from the base's under the target prompts — and its output on the preserve prompts is unchanged."""
    model = build(kind)
    base = {name: value.detach().clone() for name, value in model.state_dict().items()}
    tokens, pooled = world(kind)
    prompts = concept_prompts(tokens, pooled, concept=0, anchor=1)
    ctx = edit_context(model, base, prompts, tokens, pooled, {**EXACT}, concept="a", anchor="x")
    base_model = build(kind)
    before_target = denoise(kind, base_model, prompts["target_embeds"], prompts["target_pooled"])
    base_anchor = denoise(kind, base_model, prompts["anchor_embeds"], prompts["anchor_pooled"])
    base_preserve = denoise(kind, base_model, ctx.preserve_embeds, ctx.preserve_pooled)

    logs = get_method(method).edit(ctx)

    assert logs["erase_residual"] < 1e-6 and logs["pooled_erase_residual"] < 1e-6, logs
    assert logs["preserve_drift"] < 1e-8 and logs["pooled_preserve_drift"] < 1e-8, logs
    edited = dict(model.named_parameters())
    words = prompts["target_tokens"]
    torch.testing.assert_close(
        prompts["target_embeds"][words] @ edited["context_embedder.weight"].T,
        prompts["anchor_embeds"][words] @ base["context_embedder.weight"].T,
        atol=1e-4,
        rtol=1e-4,
    )
    assert all(not torch.equal(edited[name], base[name]) for name in TEXT_PROJ)
    assert (before_target - base_anchor).abs().max() > 1e-2  # the concept changes the base's output
    after_target = denoise(kind, model, prompts["target_embeds"], prompts["target_pooled"])
    assert after_target.isfinite().all()
    torch.testing.assert_close(after_target, base_anchor, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(denoise(kind, model, ctx.preserve_embeds, ctx.preserve_pooled), base_preserve)


def test_continual_uce_with_its_defaults_still_erases_most_of_the_concept():
    """With the shipped hyper-parameters (λ 0.1, two RECE rounds) most of the target is still erased on both
    projections. RECE's rounds add pairs (e′, ê) that conflict with the exact map, which costs exactness: the
    token residual is 0.16 here (6e-6 without the rounds), the pooled one ~1e-5; the bound is a quarter."""
    model = build("sd3")
    base = {name: value.detach().clone() for name, value in model.state_dict().items()}
    tokens, pooled = world("sd3")
    ctx = edit_context(model, base, concept_prompts(tokens, pooled, 0, 1), tokens, pooled, {}, concept="a")
    logs = get_method("continual-uce").edit(ctx)
    assert logs["erase_residual"] < 0.25 and logs["pooled_erase_residual"] < 0.25, logs


def relative_residual(weight: torch.Tensor, base: torch.Tensor, keys: torch.Tensor, anchors: torch.Tensor) -> float:
    """‖W e − W₀ ê‖ / ‖W₀ e − W₀ ê‖ over rows e of `keys`, ê of `anchors`: 0 erased exactly, 1 untouched."""
    return float((keys @ weight.T - anchors @ base.T).norm() / (keys @ base.T - anchors @ base.T).norm())


def test_the_lineage_terms_round_trip_and_keep_the_first_concept_erased(tmp_path):
    """Request 1 erases a → x and writes its terms (token and pooled) to lineage.safetensors; request 2,
    from request 1's weights with those terms and no pairs of a, re-solves from the base: its weights equal
    erasing a and b at once (a's terms recomputed from its pairs), and a is still mapped onto x. The shipped
    λ = 0.1 (the lineage file holds float32 sums: at λ ~1e-6 their rounding would dominate the solve)."""
    kind, hyper = "sd3", {"adversarial_rounds": 0}
    tokens, pooled = world(kind)
    first, second = concept_prompts(tokens, pooled, 0, 1), concept_prompts(tokens, pooled, 2, 3)
    model = build(kind)
    base = {name: value.detach().clone() for name, value in model.state_dict().items()}
    method = get_method("continual-uce")
    request_1 = edit_context(model, base, first, tokens, pooled, hyper, concept="a", anchor="x")
    method.edit(request_1)
    assert {key for key in request_1.lineage_out if key.startswith("a::")} == {
        "a::erase_cross",
        "a::erase_gram",
        "a::pooled_cross",
        "a::pooled_gram",
        "a::anchor",
    }
    save_lineage(tmp_path / "lineage.safetensors", request_1.lineage_out, ["a"])
    lineage = load_lineage(tmp_path / "lineage.safetensors")

    preserve = {key: getattr(request_1, key) for key in ("preserve_embeds", "preserve_pooled")}
    request_2 = edit_context(model, base, second, tokens, pooled, hyper, concept="b", anchor="y", lineage=lineage)
    request_2.preserve_embeds, request_2.preserve_pooled = preserve["preserve_embeds"], preserve["preserve_pooled"]
    logs = method.edit(request_2)
    assert logs["concepts"] == 2.0 and logs["refreshed"] == 0.0
    after = {name: value.detach().clone() for name, value in model.named_parameters() if name in TEXT_PROJ}

    at_once_model = build(kind)
    pairs_of_a = EncodedPairs("a", anchor="x", **first)
    at_once = edit_context(at_once_model, base, second, tokens, pooled, hyper, concept="b", earlier=(pairs_of_a,))
    at_once.preserve_embeds, at_once.preserve_pooled = preserve["preserve_embeds"], preserve["preserve_pooled"]
    method.edit(at_once)
    for name, value in at_once_model.named_parameters():
        if name in TEXT_PROJ:
            torch.testing.assert_close(after[name], value.detach(), atol=1e-4, rtol=1e-4)

    words = first["target_tokens"]
    token_weight, pooled_weight = "context_embedder.weight", "time_text_embed.text_embedder.linear_1.weight"
    still = {  # a is still erased after b's request: its residual from W₀'s anchor values stays small
        token_weight: relative_residual(
            after[token_weight], base[token_weight], first["target_embeds"][words], first["anchor_embeds"][words]
        ),
        pooled_weight: relative_residual(
            after[pooled_weight], base[pooled_weight], first["target_pooled"], first["anchor_pooled"]
        ),
    }
    assert all(value < 0.05 for value in still.values()), still


def test_a_pooled_projection_without_pooled_embeddings_is_refused():
    model = build("flux")
    base = {name: value.detach().clone() for name, value in model.state_dict().items()}
    tokens, pooled = world("flux")
    prompts = {k: v for k, v in concept_prompts(tokens, pooled, 0, 1).items() if "pooled" not in k}
    ctx = edit_context(model, base, prompts, tokens, pooled, {}, concept="a")
    ctx.preserve_pooled = None
    with pytest.raises(ValueError, match="pooled embeddings"):
        get_method("continual-uce").edit(ctx)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_only_the_closed_forms_may_edit_an_mmdit_the_others_are_refused_in_one_line(kind):
    """uce and continual-uce edit `text-proj`; every loss method (they need a UNet's attn2 maps, K/V and
    calls) is refused with one line naming the method and the transformer."""
    from unlearning.conditioning import mmdit_parameter_set

    model = build(kind)
    name = type(model).__name__
    for method in METHOD_NAMES:
        if method in ("uce", "continual-uce"):
            assert mmdit_parameter_set(model, method) == "text-proj"
            continue
        with pytest.raises(ConfigError) as refused:
            mmdit_parameter_set(model, method)
        message = str(refused.value)
        assert "\n" not in message and f"method {method} " in message and name in message, message
        assert "uce, continual-uce" in message


def test_the_loop_refuses_duge_on_an_sd3_pipeline_naming_the_method_and_the_denoiser(tmp_path):
    """Through `run_unlearning`, a loss method on an SD3 pipeline is refused before anything is written, in
    one line naming the method and the denoiser (continual-uce runs there: tests/test_mmdit_pipelines.py)."""
    from diffusers import StableDiffusion3Pipeline

    from unlearning.config import UnlearnConfig
    from unlearning.loop import run_unlearning

    components = dict.fromkeys(
        ["scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]
        + ["text_encoder_3", "tokenizer_3"]
    )
    pipe = StableDiffusion3Pipeline(transformer=build("sd3"), **components)
    cfg = UnlearnConfig(concept="cat", anchor="animal", method="duge", broad_prompts=0)
    with pytest.raises(ConfigError) as refused:
        run_unlearning(pipe, cfg, tmp_path / "run", prompts=None, model_sha="x", base_values={}, progress=False)
    message = str(refused.value)
    assert "\n" not in message and "method duge " in message and "SD3Transformer2DModel" in message, message
    assert not (tmp_path / "run").exists()
