"""What a pipeline's UNet reads for a prompt: the one place that knows the architecture.

Every prompt Lethe encodes (the unlearning step's pairs and Grams, the attack, the inversions) and every
UNet call it makes outside a pipeline goes through here, so that each architecture is conditioned exactly
as its diffusers pipeline conditions it:

- `sd` (SD1.x, SD2.x, the shapes world; `StableDiffusionPipeline`): `encoder_hidden_states` is the one text
  encoder's last hidden state (`encode_prompt` without `clip_skip`: `text_encoder(ids)[0]`); nothing added.
- `sdxl` (`StableDiffusionXLPipeline`): `encoder_hidden_states` is the *penultimate* hidden states of both
  encoders, concatenated (768 + 1280 = 2048 wide); `added_cond_kwargs` holds `text_embeds`, the second
  encoder's projected pooled embedding, and `time_ids`, (original size, crop top-left, target size).

- `sd3` (`StableDiffusion3Pipeline`, an MMDiT `transformer`): the joint text tokens are CLIP-L's and CLIP-G's
  penultimate hidden states concatenated, zero-padded to T5's width (`joint_attention_dim`) and joined with T5's
  token states along the sequence (77 + 256 tokens); `pooled` is both CLIPs' projected pooled embeddings
  concatenated.
- `flux` (`FluxPipeline`): the joint text tokens are T5's token states (512); `pooled` is CLIP-L's pooled output.
  Both are built by the pipeline's own `encode_prompt`, so they are what it conditions on.

SD2.x differs from SD1.x in what the UNet *predicts* (v-prediction), not in how it is conditioned: that is
`prediction_target`. An MMDiT (SD3, FLUX) has no attn2: its text reaches the image through joint attention,
so only a closed form with an MMDiT parameter set (uce, continual-uce: `text-proj`, `mmdit_parameter_set`)
edits it; every other method is refused in one line naming the method and the denoiser. Its tokens come in
parts, one per encoder (`segments`): a closed form pairs a target prompt's tokens with its anchor prompt's
within each part (unlearning/methods/uce.py `aligned_pairs`). The prompt attack gives every encoder input
embeddings through `encode_inputs` (an MMDiT: inside its pipeline's own `encode_prompt`) and calls the
transformer as its pipeline does through `conditioned_mmdit`, as does the textual inversion; RECE's embedding
inversion solves over an MMDiT's `context_embedder` and pooled projection (unlearning/evaluation/inversion.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

import torch

from unlearning.attention import word_token_mask
from unlearning.config import ConfigError
from unlearning.delta import denoiser
from unlearning.methods import METHOD_NAMES, get_method

SD, SDXL, SD3, FLUX = "sd", "sdxl", "sd3", "flux"
MMDIT = (SD3, FLUX)
CHUNK = 256  # prompts per text-encoder call
CLIP_TOKENS = 77
T5_TOKENS = {SD3: 256, FLUX: 512}  # the pipelines' default `max_sequence_length`: what they encode a prompt to


@dataclass(frozen=True)
class Condition:
    """The UNet's text conditioning for a batch of prompts, one row each. `hidden` is what every attn2
    to_k/to_v maps (what a closed form edits); `pooled` and `time_ids` are SDXL's added conditions (None
    for SD1.x/2.x), which the UNet reads through `add_embedding`, never through cross-attention."""

    hidden: torch.Tensor  # (B, T, D) encoder_hidden_states
    pooled: torch.Tensor | None = None  # (B, P) text_embeds: the second encoder's pooled, projected embedding
    time_ids: torch.Tensor | None = None  # (B, 6) original (h, w), crop top-left (y, x), target (h, w)

    def __len__(self) -> int:
        return len(self.hidden)

    def __getitem__(self, index) -> Condition:
        return Condition(
            self.hidden[index],
            None if self.pooled is None else self.pooled[index],
            None if self.time_ids is None else self.time_ids[index],
        )

    def repeat(self, batch: int) -> Condition:
        """One prompt's condition (a batch of one) as `batch` identical rows."""
        return Condition(
            self.hidden.expand(batch, -1, -1),
            None if self.pooled is None else self.pooled.expand(batch, -1),
            None if self.time_ids is None else self.time_ids.expand(batch, -1),
        )

    def with_hidden(self, hidden: torch.Tensor) -> Condition:
        """The same added conditions with other hidden states (an attack in embedding space moves these)."""
        return replace(self, hidden=hidden)

    def unet_kwargs(self) -> dict:
        """The keyword arguments of `UNet2DConditionModel.forward` for this condition."""
        if self.pooled is None:
            return {"encoder_hidden_states": self.hidden}
        return {
            "encoder_hidden_states": self.hidden,
            "added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": self.time_ids},
        }


def architecture(pipe, method: str | None = None) -> str:
    """`sd`, `sdxl`, `sd3` or `flux` (module docstring), from the pipeline's components; `method`, when given,
    must be able to edit that denoiser.

    Raises:
        ConfigError: an MMDiT (SD3, FLUX) with a method that cannot edit one (`mmdit_parameter_set`), or a
            pipeline whose denoiser is neither a UNet with cross-attention nor an MMDiT. One line naming the
            method, the pipeline and its denoiser.
    """
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet.config, "cross_attention_dim"):
        model = getattr(pipe, "transformer", None) or unet
        what = f"{type(pipe).__name__} ({type(model).__name__ if model is not None else 'no denoiser'})"
        if is_mmdit(model):
            if method is not None:
                mmdit_parameter_set(model, method, what=what)  # refuses a method that cannot edit an MMDiT
            return SD3 if hasattr(pipe, "text_encoder_3") else FLUX
        raise ConfigError(
            f"method {method or 'any method'} edits a UNet's cross-attention or an MMDiT's text projections; "
            f"{what} has neither (SD1.x, SD2.x, SDXL, SD3 and FLUX can be edited)"
        )
    if getattr(pipe, "text_encoder_2", None) is not None and unet.config.get("addition_embed_type") == "text_time":
        return SDXL
    return SD


def is_mmdit(denoiser) -> bool:
    """An MMDiT (diffusers' `SD3Transformer2DModel`, `FluxTransformer2DModel`): a transformer whose joint text
    tokens enter through `context_embedder` and whose pooled embedding enters through `time_text_embed`."""
    return hasattr(denoiser, "context_embedder") and hasattr(denoiser, "time_text_embed")


def mmdit_parameter_set(transformer, method: str, *, what: str | None = None) -> str:
    """The parameter set `method` edits on an MMDiT: its `MMDIT_PARAMS` (unlearning/methods), `text-proj` for
    uce and continual-uce, the projections that see the text alone (unlearning/parameters.py).

    Raises:
        ConfigError: `transformer` is not an MMDiT, or `method` has no MMDiT set: the loss methods train
            through a UNet's attn2 (its maps, its K/V, its calls with a UNet's conditioning) — one line
            naming the method and the denoiser.
    """
    what = what or type(transformer).__name__
    if not is_mmdit(transformer):
        raise ConfigError(f"method {method}: {what} is not an MMDiT (no context_embedder and time_text_embed)")
    parameter_set = getattr(get_method(method), "MMDIT_PARAMS", None)
    if parameter_set is None:
        editable = ", ".join(name for name in METHOD_NAMES if hasattr(get_method(name), "MMDIT_PARAMS"))
        raise ConfigError(
            f"method {method} needs a UNet's cross-attention (attn2), which {what} (an MMDiT) has none of; "
            f"on an MMDiT only {editable} run (a closed-form edit of its text projections)"
        )
    return parameter_set


def text_encoders(pipe) -> list[torch.nn.Module]:
    """Every text encoder the pipeline conditions on (frozen by the unlearning step)."""
    names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    return [e for e in (getattr(pipe, name, None) for name in names) if e is not None]


def _ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def time_ids(pipe, batch: int) -> torch.Tensor:
    """SDXL's six added time ids as its pipeline builds them by default: the image's size as original and
    target size (`unet.sample_size` × the VAE's scale factor), no crop; (batch, 6), float32.

    Raises:
        ConfigError: the UNet's `add_embedding` expects another width than 6 time ids and the pooled embedding.
    """
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    expected = pipe.unet.add_embedding.linear_1.in_features
    passed = pipe.unet.config.addition_time_embed_dim * 6 + pipe.text_encoder_2.config.projection_dim
    if expected != passed:
        raise ConfigError(
            f"this SDXL UNet's add_embedding takes {expected} features; 6 time ids and the pooled give {passed}"
        )
    ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32, device=pipe.device)
    return ids.expand(batch, -1)


def text_pairs(pipe) -> list[tuple[object, torch.nn.Module]]:
    """(tokenizer, text encoder) of every encoder the condition is built from, in the order the pipeline encodes:
    SD1.x/2.x one CLIP; SDXL two; SD3 CLIP-L, CLIP-G and T5 (where the pipeline has it); FLUX CLIP-L (its pooled)
    and T5 (its tokens). The first is a CLIP in every architecture."""
    arch = architecture(pipe)
    if arch == SD:
        return [(pipe.tokenizer, pipe.text_encoder)]
    names = {SDXL: ("", "_2"), SD3: ("", "_2", "_3"), FLUX: ("", "_2")}[arch]
    pairs = [(getattr(pipe, f"tokenizer{n}"), getattr(pipe, f"text_encoder{n}")) for n in names]
    return [(tokenizer, encoder) for tokenizer, encoder in pairs if encoder is not None]  # SD3 may drop T5


def token_length(pipe, tokenizer) -> int:
    """How many tokens the pipeline encodes a prompt to with `tokenizer`: an MMDiT's T5 its default
    `max_sequence_length` (`T5_TOKENS`), every CLIP its `model_max_length` (77)."""
    arch = architecture(pipe)
    t5 = {SD3: "tokenizer_3", FLUX: "tokenizer_2"}.get(arch)
    if t5 is not None and tokenizer is getattr(pipe, t5):
        return T5_TOKENS[arch]
    return tokenizer.model_max_length


Inputs = Callable[[object, torch.nn.Module], tuple[torch.Tensor, torch.Tensor | None]]


def encode_inputs(pipe, inputs: Inputs, text: str | None = None) -> Condition:
    """The condition of token ids whose input embeddings may be given: `inputs(tokenizer, token_embedding)`
    returns, for each encoder (`text_pairs`), (ids, embeddings or None). Given embeddings (differentiable: an
    attack's relaxed tokens, a learnt token) replace the encoder's own lookup of `ids` — through a hook on its
    token-embedding layer (`_given_lookup`), so everything else (positions, the causal mask, the pooled EOS
    position read from `ids`) is the encoder's own forward: transformers' CLIP text models take no `inputs_embeds`.

    An MMDiT (SD3, FLUX) is encoded by its pipeline's own `encode_prompt` (`encode`), which tokenizes `text`
    itself: `text` is what the ids spell, each encoder's ids must be the ones the pipeline makes of it (padded to
    `token_length`), and the hooks replace the lookups inside that call.

    Raises:
        ValueError: an MMDiT without `text`; a pipeline's tokenizer makes other ids of `text` than the given; an
            encoder never looked up the ids whose embeddings were given.
    """
    arch = architecture(pipe)
    if arch in MMDIT:
        if text is None:
            raise ValueError(f"{type(pipe).__name__}: given input embeddings need the text their ids spell")
        with ExitStack() as stack:
            for tokenizer, encoder in text_pairs(pipe):
                ids, embeds = inputs(tokenizer, encoder.get_input_embeddings())
                if embeds is not None:
                    stack.enter_context(_given_lookup(encoder, ids, embeds, what=type(tokenizer).__name__))
            return _encode_mmdit(pipe, arch, [text])
    states, pooled = [], None
    for tokenizer, encoder in text_pairs(pipe):
        ids, embeds = inputs(tokenizer, encoder.get_input_embeddings())
        with ExitStack() as stack:
            if embeds is not None:
                stack.enter_context(_given_lookup(encoder, ids, embeds, what=type(tokenizer).__name__))
            out = encoder(ids.to(pipe.device), output_hidden_states=arch == SDXL)
        states.append(out[0] if arch == SD else out.hidden_states[-2])  # SDXL: the penultimate layer
        pooled = out[0]  # SDXL: the second encoder's text_embeds
    if arch == SD:
        return Condition(states[0].float())
    return Condition(torch.cat(states, dim=-1).float(), pooled.float(), time_ids(pipe, len(pooled)))


@contextmanager
def _given_lookup(encoder: torch.nn.Module, ids: torch.Tensor, embeds: torch.Tensor, *, what: str):
    """Within the block, `encoder`'s token lookup of `ids` returns `embeds`. The hook sits on every embedding
    layer that holds the input-embedding table's weight: T5's encoder looks up through its own `embed_tokens`,
    tied to (not the same module as) `get_input_embeddings()`'s `shared`.

    Raises:
        ValueError: the encoder looked up other ids than `ids`, or none at all (the embeddings were not used).
    """
    weight = encoder.get_input_embeddings().weight
    lookups = [m for m in encoder.modules() if isinstance(m, torch.nn.Embedding) and m.weight is weight]
    used = []

    def hook(module, args, output):
        if not torch.equal(args[0].cpu(), ids.cpu()):
            raise ValueError(f"{what}: the encoder looked up other ids than the given embeddings were made for")
        used.append(module)
        return embeds

    handles = [lookup.register_forward_hook(hook) for lookup in lookups]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    if not used:
        raise ValueError(f"{what}: the encoder never looked up the ids whose embeddings were given")


@torch.no_grad()
def encode(pipe, prompts: list[str]) -> Condition:
    """The UNet's condition for `prompts` (module docstring), padded to the tokenizer's length, float32."""
    if not prompts:  # an empty batch of the right widths
        return encode(pipe, [""])[:0]
    if (arch := architecture(pipe)) in MMDIT:
        return _encode_mmdit(pipe, arch, prompts)
    chunks = [
        encode_inputs(
            pipe, lambda tokenizer, _table, chunk=prompts[start : start + CHUNK]: (_ids(tokenizer, chunk), None)
        )
        for start in range(0, len(prompts), CHUNK)
    ]
    if len(chunks) == 1:
        return chunks[0]
    pooled = None if chunks[0].pooled is None else torch.cat([c.pooled for c in chunks])
    time = None if chunks[0].time_ids is None else torch.cat([c.time_ids for c in chunks])
    return Condition(torch.cat([c.hidden for c in chunks]), pooled, time)


def _encode_mmdit(pipe, arch: str, prompts: list[str]) -> Condition:
    """An MMDiT's joint text tokens and pooled embedding (module docstring), from the pipeline's own
    `encode_prompt` at its default T5 length, float32."""
    hidden, pooled = [], []
    for start in range(0, len(prompts), CHUNK):
        chunk = prompts[start : start + CHUNK]
        if arch == SD3:
            tokens, _, chunk_pooled, _ = pipe.encode_prompt(
                chunk,
                None,
                None,
                device=pipe.device,
                do_classifier_free_guidance=False,
                max_sequence_length=T5_TOKENS[SD3],
            )
        else:
            tokens, chunk_pooled, _ = pipe.encode_prompt(
                chunk, None, device=pipe.device, max_sequence_length=T5_TOKENS[FLUX]
            )
        hidden.append(tokens.float())
        pooled.append(chunk_pooled.float())
    return Condition(torch.cat(hidden), torch.cat(pooled))


def segments(pipe) -> tuple[tuple[object, int], ...]:
    """The parts of the condition's token sequence, in order, one per tokenizer: (tokenizer, length). SD1.x/2.x
    and SDXL: one (SDXL's two encoders share positions); SD3: CLIP's 77 (CLIP-L and CLIP-G side by side), then
    T5's 256; FLUX: T5's 512."""
    arch = architecture(pipe)
    if arch == SD3:
        return ((pipe.tokenizer, CLIP_TOKENS), (pipe.tokenizer_3, T5_TOKENS[SD3]))
    if arch == FLUX:
        return ((pipe.tokenizer_2, T5_TOKENS[FLUX]),)
    return ((pipe.tokenizer, pipe.tokenizer.model_max_length),)


def word_tokens(pipe, prompts: list[str], words: list[str]) -> torch.Tensor:
    """(N, T) bool over the condition's tokens: True at `words[i]`'s tokens in `prompts[i]`, in every part
    (`segments`), on the pipeline's device."""
    masks = [word_token_mask(tokenizer, prompts, words, length) for tokenizer, length in segments(pipe)]
    return torch.cat(masks, dim=1).to(pipe.device)


def segment_lengths(pipe) -> tuple[int, ...]:
    """The lengths of the condition's token parts (`segments`): what a closed form pairs tokens within."""
    return tuple(length for _, length in segments(pipe))


def pipeline_kwargs(condition: Condition, negative: Condition) -> dict:
    """A condition and its negative as a diffusers pipeline's `prompt_embeds` keyword arguments (SDXL: with
    the pooled embeddings; the pipeline adds the time ids itself)."""
    kwargs = {"prompt_embeds": condition.hidden, "negative_prompt_embeds": negative.hidden}
    if condition.pooled is not None:
        kwargs |= {"pooled_prompt_embeds": condition.pooled, "negative_pooled_prompt_embeds": negative.pooled}
    return kwargs


def width(pipe) -> int:
    """D, the width of the token embeddings every attn2 to_k/to_v maps (an MMDiT's `context_embedder`)."""
    model = denoiser(pipe)
    return model.config.joint_attention_dim if is_mmdit(model) else model.config.cross_attention_dim


def conditioned(unet: Callable) -> Callable:
    """`unet` called as `(sample, timestep, condition)`: a `Condition` brings its added conditions, a plain
    tensor is the hidden states alone (an SD1.x/2.x condition). What a method's loss calls the student and
    the parent with."""

    def call(sample: torch.Tensor, timestep: torch.Tensor, condition: Condition | torch.Tensor):
        if isinstance(condition, Condition):
            return unet(sample, timestep, **condition.unet_kwargs())
        return unet(sample, timestep, encoder_hidden_states=condition)

    return call


def conditioned_mmdit(pipe, transformer: torch.nn.Module, guidance_scale: float) -> Callable:
    """An MMDiT `transformer` (the pipeline's, or a base's of the same architecture) called as `(latents, σ,
    condition)`, exactly as its pipeline's denoising loop calls it at noise level σ ∈ (0, 1], σ = t / T (T the
    scheduler's `num_train_timesteps`): `latents` are what the pipeline's loop carries (`output_type="latent"`).

    - SD3 (`StableDiffusion3Pipeline.__call__`): `timestep` is the scheduler's t = σ T; `encoder_hidden_states`
      the joint tokens, `pooled_projections` the pooled embedding.
    - FLUX (`FluxPipeline.__call__`): `timestep` is t / 1000 (the transformer multiplies by 1000 again);
      the latents are packed 2 x 2 patches (`_pack_latents`), located by `img_ids` (the pipeline's
      `_prepare_latent_image_ids` at its default size) and the text by `txt_ids` (zeros, as `encode_prompt`
      returns them); a guidance-distilled transformer (`guidance_embeds`: FLUX.1-dev) reads `guidance_scale` as
      its guidance embedding, the pipeline's `guidance` (FLUX.1-schnell has none).
    """
    arch = architecture(pipe)
    steps = pipe.scheduler.config.num_train_timesteps

    def call(latents: torch.Tensor, sigma: torch.Tensor, condition: Condition):
        dtype = transformer.dtype
        hidden, pooled = condition.hidden.to(dtype), condition.pooled.to(dtype)
        t = (sigma * steps).to(dtype)
        if arch == SD3:
            return transformer(
                hidden_states=latents.to(dtype), timestep=t, encoder_hidden_states=hidden, pooled_projections=pooled
            )
        size = pipe.default_sample_size * pipe.vae_scale_factor  # the size `generate` samples FLUX at
        side = 2 * (size // (pipe.vae_scale_factor * 2)) // 2  # packed patches a side (`prepare_latents`)
        if latents.shape[1] != side * side:
            raise ValueError(f"FLUX latents of {latents.shape[1]} patches; its default size packs {side * side}")
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((len(latents),), guidance_scale, device=latents.device, dtype=torch.float32)
        return transformer(
            hidden_states=latents.to(dtype),
            timestep=t / 1000,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=hidden,
            txt_ids=torch.zeros(hidden.shape[1], 3, device=latents.device, dtype=dtype),
            img_ids=pipe._prepare_latent_image_ids(len(latents), side, side, latents.device, dtype),
        )

    return call


def prediction_target(
    prediction_type: str, alphas: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """What the UNet is trained to predict at x_t = √ᾱ x₀ + √(1−ᾱ) ε (`alphas`: ᾱ_t per row, broadcastable):
    ε for `epsilon`, the velocity v = √ᾱ ε − √(1−ᾱ) x₀ for `v_prediction` (SD2.x; Salimans & Ho 2022,
    "Progressive Distillation", sec. 4), x₀ for `sample`.

    Raises:
        ConfigError: another prediction type.
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return alphas.sqrt() * noise - (1 - alphas).sqrt() * latents
    if prediction_type == "sample":
        return latents
    raise ConfigError(f"prediction_type {prediction_type!r}: expected epsilon, v_prediction or sample")
