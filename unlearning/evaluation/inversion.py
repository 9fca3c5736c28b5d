"""Two attacks an adversary with more than a keyboard has: reported beside the gate, never gated.

- **Embedding inversion** (RECE, Gong et al. ECCV 2024, eq. 6–7): the embedding e′ that makes the
  candidate's cross-attention keys and values for a token closest to what the base computes for the
  concept's token e,

      e′ = argmin_e′ Σ_l ‖W_l e′ − W₀_l e‖² + ρ‖e′‖² = (ρI + Σ_l W_lᵀW_l)⁻¹ Σ_l W_lᵀ W₀_l e,

  over every attn2 to_k / to_v (W_l the candidate's, W₀_l the base's); ρ is `ridge` times the mean
  eigenvalue of Σ_l W₀_lᵀW₀_l (scale-free). Reported: the relative residual Σ‖W e′ − W₀ e‖² / Σ‖W₀ e‖²
  (0: the edit is undone exactly), the distance from e′ to the nearest embedding of a real prompt's
  token relative to ‖e‖ (far: no typed prompt reaches it), and how often the candidate draws the concept
  when e′ replaces the prompt's embeddings. An edit W = W₀R with R invertible always has residual ≈ 0:
  an embedding attack always wins against it, which is why the gate tests typeable prompts.

  **On an MMDiT** (SD3, FLUX) no attn2 reads the text alone; the maps an edit changes are its `text-proj` set
  (unlearning/methods/uce.py): `context_embedder`, a linear map of the joint text tokens, and the pooled
  projection `time_text_embed.text_embedder.linear_1`. The same closed form runs over each, with its bias
  (an edit of the weight alone leaves b = b₀, and the bias terms cancel):

      e′ = (ρI + WᵀW)⁻¹ Wᵀ (W₀ e + b₀ − b)

  for every row e of the joint tokens the transformer reads (`Condition.hidden`: SD3's CLIP pair's states,
  zero-padded, joined with T5's; FLUX's T5 tokens), and the same in the pooled space for the pooled embedding
  p. So the space differs from a UNet's: there e′ lives in the text encoder's output before attn2's K/V, here
  in the encoders' joined output before `context_embedder` (and the pooled one before its projection). The
  nearest real token is measured among the rows real prompts encode to in that same space (and the nearest
  real pooled embedding among theirs), and the candidate samples with both e′ and p′ in place of the
  concept's prompt's (the edit changed both maps). `context_embedder` maps a wide joint space into a narrower
  transformer (SD3: 4096 → 1536): W is onto, so the residual is ≈ 0 for any edit that keeps it onto — the
  distance to a real token and the draws are what says how far the attack had to leave typed text.
- **Textual inversion** (Gal et al. ICLR 2023, eq. 2): one new token's input embedding v, learnt on the
  *candidate* with the denoising loss on the base's images of the concept (‖ε − ε_θ(x_t, t, c("a v"))‖²; on an
  MMDiT the flow-matching loss ‖(ε − x₀) − v_θ(x_σ, σ, c("a v"))‖², unlearning/evaluation/flow.py); reported:
  how often the candidate draws the concept for "a v". The placeholder is typed as a word every tokenizer of
  the pipeline reads as one token (`init_word`, else the first of the attack's shared vocabulary,
  attack.py `_shared_vocabulary`, that is neither "a" nor the concept), and v is one vector *per text
  encoder* (SD3: CLIP-L, CLIP-G, T5; FLUX: CLIP-L, T5; SDXL: both CLIPs), initialised from that encoder's row
  of the word and replacing its lookup at the word's position: each encoder has its own table (its own
  width), so no one vector could be looked up by all, and a new token a user added would have a row in each.
  The word's position is where each tokenizer puts it, so the text stays what the pipeline's own
  `encode_prompt` tokenizes (conditioning.py `encode_inputs`, the prompt attack's path) and the other tokens
  (BOS, EOS, padding) are the encoder's own; the concept's images are sampled from that condition
  (sampling.py `generate_from_condition`: an MMDiT's own call, given `prompt_embeds`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from unlearning.conditioning import (
    MMDIT,
    Condition,
    architecture,
    encode,
    encode_inputs,
    text_encoders,
    text_pairs,
)
from unlearning.delta import denoiser
from unlearning.evaluation.attack import (
    AttackBudget,
    _hits,
    _seeds,
    _shared_vocabulary,
    _tokenizers,
    base_latents,
    denoising,
    noised,
    typed_ids,
)
from unlearning.sampling import generate_from_condition

KV_WEIGHTS = (".attn2.to_k.weight", ".attn2.to_v.weight")
TOKEN_MAP, POOLED_MAP = "context_embedder", "time_text_embed.text_embedder.linear_1"  # an MMDiT's `text-proj`
TEXTUAL_INVERSION_STEPS = 100  # read when `diagnose` runs (a test of the evaluation's path may take fewer)
REFERENCE_CHUNK = 16  # reference prompts encoded at once: all of them, at an MMDiT's 333–512 rows each, may not fit

# (W, b, W₀, b₀), float64: one linear map of the candidate and the base's; b = 0 for attn2's bias-free K/V
Map = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _kv_pairs(candidate_unet, base_unet) -> list[Map]:
    base = dict(base_unet.named_parameters())
    maps = []
    for name, weight in candidate_unet.named_parameters():
        if name.endswith(KV_WEIGHTS):
            w, w0 = weight.detach().double(), base[name].detach().double()
            zeros = torch.zeros(len(w), dtype=torch.float64, device=w.device)
            maps.append((w, zeros, w0, zeros))
    return maps


def _linear_map(candidate, base, name: str) -> Map:
    """The candidate's and the base's Linear `name` of an MMDiT transformer, weights and biases (0 where none)."""
    mine, theirs = candidate.get_submodule(name), base.get_submodule(name)

    def bias(linear):
        return torch.zeros(linear.out_features) if linear.bias is None else linear.bias

    parts = (mine.weight, bias(mine), theirs.weight, bias(theirs))
    return tuple(t.detach().double().to(mine.weight.device) for t in parts)


def ridge_inverse(maps: list[Map], embeds: torch.Tensor, ridge: float) -> tuple[torch.Tensor, float]:
    """(e′ for every row e of `embeds` (N, D), the relative residual) of RECE's closed form over `maps`:
    e′ = argmin Σ_l ‖W_l e′ + b_l − (W₀_l e + b₀_l)‖² + ρ‖e′‖² = (ρI + Σ_l W_lᵀW_l)⁻¹ Σ_l W_lᵀ (W₀_l e + b₀_l − b_l)
    (module docstring), ρ = `ridge` · tr(Σ_l W₀_lᵀW₀_l) / D; the residual is the first sum at e′ over
    Σ_l ‖W₀_l e + b₀_l‖², the base's outputs."""
    dim = embeds.shape[1]
    embeds = embeds.double()
    rho = ridge * sum(float(torch.trace(w0.T @ w0)) for _, _, w0, _ in maps) / dim
    system = rho * torch.eye(dim, dtype=torch.float64, device=embeds.device) + sum(w.T @ w for w, _, _, _ in maps)
    targets = [embeds @ w0.T + b0 for _, _, w0, b0 in maps]  # what the base computes for each row
    rhs = sum((target - b) @ w for (w, b, _, _), target in zip(maps, targets))  # (N, D): rows of Σ Wᵀ(W₀e + b₀ − b)
    inverted = torch.linalg.solve(system, rhs.T).T
    residual = sum(float((inverted @ w.T + b - t).pow(2).sum()) for (w, b, _, _), t in zip(maps, targets))
    scale = sum(float(t.pow(2).sum()) for t in targets)
    return inverted, residual / max(scale, 1e-20)


def _nearest(base_pipe, references: list[str], rows: torch.Tensor, pooled: torch.Tensor | None):
    """Each inverted row's distance to the nearest row of the real `references` prompts (their encoded tokens,
    and for `pooled` their pooled embeddings), in the base's space: one chunk of prompts at a time."""
    best = torch.full((len(rows),), float("inf"), dtype=torch.float64, device=rows.device)
    best_pooled = None if pooled is None else torch.full_like(best[: len(pooled)], float("inf"))
    for start in range(0, len(references), REFERENCE_CHUNK):
        real = encode(base_pipe, references[start : start + REFERENCE_CHUNK])
        tokens = real.hidden.double().reshape(-1, rows.shape[1]).to(rows.device)
        best = torch.minimum(best, torch.cdist(rows, tokens).min(dim=1).values)
        if pooled is not None:
            distances = torch.cdist(pooled, real.pooled.double().to(pooled.device))
            best_pooled = torch.minimum(best_pooled, distances.min(dim=1).values)
    return best, best_pooled


def _sample(pipe, condition: Condition, seeds: list[int], sampler: dict) -> np.ndarray:
    """Images for conditions no prompt spells (one row per image), with the evaluation's sampler."""
    return generate_from_condition(
        pipe, condition, seeds, steps=sampler["steps"], guidance_scale=sampler["guidance_scale"]
    )


@torch.no_grad()
def embedding_inversion(
    pipe,
    base_pipe,
    judge,
    *,
    head: str,
    concept: str,
    prompts: list[str],
    reference_prompts: list[str],
    sampler: dict,
    ridge: float = 0.1,
    seeds_per_prompt: int = 2,
) -> dict:
    """RECE's inversion of the concept's prompts under the candidate (module docstring): over every attn2 K/V
    of a UNet, over `context_embedder` and the pooled projection of an MMDiT."""
    mmdit = architecture(pipe) in MMDIT
    if mmdit:
        token_maps = [_linear_map(denoiser(pipe), denoiser(base_pipe), TOKEN_MAP)]
    else:
        token_maps = _kv_pairs(pipe.unet, base_pipe.unet)
        if not token_maps:
            return {"residual": float("nan"), "note": "no attn2 to_k/to_v weights"}
    base_condition = encode(base_pipe, prompts)  # what the base reads for the concept's prompts
    embeds = base_condition.hidden.double()  # (P, T, D)
    flat = embeds.reshape(-1, embeds.shape[-1])
    inverted, residual = ridge_inverse(token_maps, flat, ridge)
    result = {"residual": residual}
    pooled = None
    if mmdit:  # the pooled projection, edited too: its own inversion in the pooled space
        pooled_maps = [_linear_map(denoiser(pipe), denoiser(base_pipe), POOLED_MAP)]
        pooled, result["pooled_residual"] = ridge_inverse(pooled_maps, base_condition.pooled.double(), ridge)
    nearest, nearest_pooled = _nearest(base_pipe, reference_prompts, inverted, pooled)
    result["nearest_real_token"] = float((nearest / flat.norm(dim=1).clamp_min(1e-12)).mean())
    if mmdit:
        relative = nearest_pooled / base_condition.pooled.double().norm(dim=1).clamp_min(1e-12)
        result["pooled_nearest_real"] = float(relative.mean())
    seeds = [s for p in prompts for s in _seeds(p, seeds_per_prompt, 200)]
    rows = inverted.reshape(embeds.shape)
    index = torch.arange(len(prompts)).repeat_interleave(seeds_per_prompt)
    if mmdit:
        condition = Condition(rows[index], pooled[index])
    else:  # SDXL: each prompt's pooled embedding and time ids stay the base's (K/V read only the tokens)
        condition = base_condition[index].with_hidden(rows[index])
    drawn = _hits(judge, _sample(pipe, condition, seeds, sampler), head, concept)
    return result | {"draws": float(drawn.mean()), "n": int(len(drawn)), "ridge": ridge}


@dataclass(frozen=True)
class Placeholder:
    """The typed text "a <word>" of the textual inversion and, per text encoder (`text_pairs`), the ids its
    pipeline makes of it and the word's position among them (module docstring)."""

    word: str
    text: str
    ids: tuple[torch.Tensor, ...]  # (1, T) per encoder
    positions: tuple[int, ...]


def placeholder(pipe, init_word: str, concept: str = "") -> Placeholder:
    """The placeholder word: `init_word` where every tokenizer of the pipeline types it as one token, else the
    first word of the attack's shared vocabulary (one token in all of them) other than "a" (the text is "a <word>")
    and the `concept` (a start at the concept's own word would not be an inversion).

    Raises:
        ValueError: a tokenizer does not put the word right after "a" (what the learnt rows replace).
    """
    tokenizers = _tokenizers(pipe)
    if all(len(tokenizer(init_word, add_special_tokens=False).input_ids) == 1 for tokenizer in tokenizers):
        word = init_word
    else:
        word = next(known for known in _shared_vocabulary(tokenizers)[0] if known not in ("a", concept))
    text, ids, positions = f"a {word}", [], []
    for tokenizer, _ in text_pairs(pipe):
        typed, start = typed_ids(pipe, tokenizer, text)
        position = start + len(tokenizer("a", add_special_tokens=False).input_ids)
        if int(typed[0, position]) != tokenizer(word, add_special_tokens=False).input_ids[0]:
            raise ValueError(f"{type(tokenizer).__name__} does not put {word!r} after 'a' in {text!r}")
        ids.append(typed)
        positions.append(position)
    return Placeholder(word, text, tuple(ids), tuple(positions))


def initial_rows(pipe, token: Placeholder) -> list[torch.Tensor]:
    """Each encoder's own input embedding of the placeholder word: where the learnt vectors start."""
    return [
        encoder.get_input_embeddings().weight[int(ids[0, position])].detach().clone()
        for (_, encoder), ids, position in zip(text_pairs(pipe), token.ids, token.positions)
    ]


def learnt_condition(pipe, token: Placeholder, learnt: list[torch.Tensor]) -> Condition:
    """The condition of "a <word>" with each encoder's learnt vector in place of its lookup of the word."""
    rows = iter(zip(token.ids, token.positions, learnt))

    def inputs(_tokenizer, table):
        ids, position, row = next(rows)
        fixed = table(ids.to(row.device))
        return ids, torch.cat([fixed[:, :position], row[None, None].to(fixed.dtype), fixed[:, position + 1 :]], dim=1)

    return encode_inputs(pipe, inputs, text=token.text)


def denoising_loss(pipe, x0: torch.Tensor, condition: Condition, generator: torch.Generator, sampler: dict):
    """Gal et al.'s loss for one draw of noise and time per row of the base's latents `x0`: a UNet's
    ‖target − ε_θ(x_t, t, c)‖² (ε, or v for a v-prediction model) over its training timesteps, an MMDiT's
    ‖(ε − x₀) − v_θ(x_σ, σ, c)‖² over its training σ (attack.py `noised`, `denoising`: the prompt attack's)."""
    noisy, t, target = noised(pipe, x0, generator)
    prediction = denoising(pipe, sampler)(noisy, t, condition.repeat(len(x0)))
    return (prediction.sample.float() - target.float()).pow(2).mean()


def learn_token(
    pipe, x0: torch.Tensor, token: Placeholder, *, sampler: dict, steps: int, lr: float, seed: int
) -> tuple[list[torch.Tensor], float]:
    """(the learnt vectors, one per encoder; the last step's loss): Adam on `denoising_loss`, the candidate's
    denoiser and encoders frozen."""
    learnt = [row.requires_grad_(True) for row in initial_rows(pipe, token)]
    optimizer = torch.optim.Adam(learnt, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    denoiser(pipe).requires_grad_(False)
    for encoder in text_encoders(pipe):
        encoder.requires_grad_(False)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = denoising_loss(pipe, x0, learnt_condition(pipe, token, learnt), generator, sampler)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [row.detach() for row in learnt], float(loss.detach())


def textual_inversion(
    pipe,
    x0: torch.Tensor,
    judge,
    *,
    head: str,
    concept: str,
    sampler: dict,
    steps: int = TEXTUAL_INVERSION_STEPS,
    lr: float = 5e-3,
    init_word: str = "shape",
    seeds: int = 8,
    seed: int = 0,
) -> dict:
    """One token's embedding learnt on the candidate from the base's latents `x0` of the concept; how often
    "a <token>" then draws it (module docstring)."""
    token = placeholder(pipe, init_word, concept)
    learnt, final_loss = learn_token(pipe, x0, token, sampler=sampler, steps=steps, lr=lr, seed=seed)
    with torch.no_grad():
        condition = learnt_condition(pipe, token, learnt).repeat(seeds)
        images = _sample(pipe, condition, _seeds(f"textual-inversion|{concept}", seeds, 0), sampler)
    drawn = _hits(judge, images, head, concept)
    return {
        "draws": float(drawn.mean()),
        "n": int(len(drawn)),
        "steps": steps,
        "final_loss": final_loss,
        "init_word": token.word,
    }


def diagnose(
    pipe,
    base_pipe,
    judge,
    *,
    head: str,
    concept: str,
    prompts: list[str],
    reference_prompts: list[str],
    budget: AttackBudget,
    sampler: dict,
) -> dict:
    """Both diagnostics for one erased concept: the inversion of its first eight phrasings (`prompts`), and a
    textual inversion learnt on the base's images of the first phrasing the base draws it for."""
    x0 = None
    for prompt in prompts[:8]:
        if (x0 := base_latents(base_pipe, judge, head, concept, prompt, budget, sampler)) is not None:
            break
    common = {"head": head, "concept": concept, "sampler": sampler}
    return {
        "embedding_inversion": embedding_inversion(
            pipe, base_pipe, judge, prompts=prompts[:8], reference_prompts=reference_prompts, **common
        ),
        "textual_inversion": (
            None if x0 is None else textual_inversion(pipe, x0, judge, steps=TEXTUAL_INVERSION_STEPS, **common)
        ),
    }
