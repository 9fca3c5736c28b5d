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
- **Textual inversion** (Gal et al. ICLR 2023): one new token's input embedding v, learnt on the
  *candidate* with the denoising loss on the base's images of the concept (‖ε − ε_θ(x_t, t, c("a v"))‖²);
  reported: how often the candidate draws the concept for "a v".
"""

from __future__ import annotations

import numpy as np
import torch

from unlearning.conditioning import (
    Condition,
    conditioned,
    encode,
    encode_inputs,
    text_encoders,
    text_pairs,
)
from unlearning.evaluation.attack import AttackBudget, _hits, _seeds, _target, base_latents
from unlearning.sampling import generate_from_condition

KV_WEIGHTS = (".attn2.to_k.weight", ".attn2.to_v.weight")


def _kv_pairs(candidate_unet, base_unet) -> list[tuple[torch.Tensor, torch.Tensor]]:
    base = dict(base_unet.named_parameters())
    return [
        (weight.detach().double(), base[name].detach().double())
        for name, weight in candidate_unet.named_parameters()
        if name.endswith(KV_WEIGHTS)
    ]


def _sample(pipe, condition: Condition, seeds: list[int], sampler: dict) -> np.ndarray:
    """Images for conditions no prompt spells (one row per image), with the evaluation's sampler."""
    return generate_from_condition(
        pipe, condition, seeds, steps=sampler["steps"], guidance_scale=sampler["guidance_scale"]
    )


def _encode(pipe, prompts: list[str]) -> torch.Tensor:
    """The token embeddings attn2 K/V map (unlearning/conditioning.py), float64."""
    return encode(pipe, prompts).hidden.double()


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
    """RECE's inversion of the concept's prompts under the candidate (module docstring)."""
    pairs = _kv_pairs(pipe.unet, base_pipe.unet)
    if not pairs:
        return {"residual": float("nan"), "note": "no attn2 to_k/to_v weights"}
    dim = pairs[0][0].shape[1]
    base_gram = sum(w0.T @ w0 for _, w0 in pairs)
    rho = ridge * float(torch.trace(base_gram)) / dim
    system = rho * torch.eye(dim, dtype=torch.float64) + sum(w.T @ w for w, _ in pairs)
    cross = sum(w.T @ w0 for w, w0 in pairs)
    base_condition = encode(base_pipe, prompts)  # what the base reads for the concept's prompts
    embeds = base_condition.hidden.double()  # (P, T, D)
    inverted = torch.linalg.solve(system, cross @ embeds.reshape(-1, dim).T).T  # (P*T, D)
    flat = embeds.reshape(-1, dim)
    residual = sum(float((inverted @ w.T - flat @ w0.T).pow(2).sum()) for w, w0 in pairs)
    scale = sum(float((flat @ w0.T).pow(2).sum()) for _, w0 in pairs)
    references = _encode(base_pipe, reference_prompts).reshape(-1, dim)
    nearest = torch.cdist(inverted, references).min(dim=1).values / flat.norm(dim=1).clamp_min(1e-12)
    seeds = [s for p in prompts for s in _seeds(p, seeds_per_prompt, 200)]
    rows = inverted.reshape(embeds.shape)
    # SDXL: each prompt's pooled embedding and time ids stay the base's (the inversion is of the tokens K/V read)
    index = torch.arange(len(prompts)).repeat_interleave(seeds_per_prompt)
    images = _sample(pipe, base_condition[index].with_hidden(rows[index]), seeds, sampler)
    drawn = _hits(judge, images, head, concept)
    return {
        "residual": residual / max(scale, 1e-20),
        "nearest_real_token": float(nearest.mean()),
        "draws": float(drawn.mean()),
        "n": int(len(drawn)),
        "ridge": ridge,
    }


def textual_inversion(
    pipe,
    x0: torch.Tensor,
    judge,
    *,
    head: str,
    concept: str,
    sampler: dict,
    steps: int = 100,
    lr: float = 5e-3,
    init_word: str = "shape",
    seeds: int = 8,
    seed: int = 0,
) -> dict:
    """One token's embedding learnt on the candidate from the base's latents `x0` of the concept; how often
    "a <token>" then draws it (module docstring)."""
    unet, scheduler = pipe.unet, pipe.scheduler
    position = 2  # [BOS] a <token>
    pairs = text_pairs(pipe)  # SDXL: one learnt row per encoder (their tables differ)
    ids = [
        tok(f"a {init_word}", padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        for tok, _ in pairs
    ]
    with torch.no_grad():
        learnt = [enc.get_input_embeddings()(i.to(unet.device))[0, position].clone() for (_, enc), i in zip(pairs, ids)]
    learnt = [row.requires_grad_(True) for row in learnt]
    optimizer = torch.optim.Adam(learnt, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    alphas = scheduler.alphas_cumprod.to(unet.device)
    unet.requires_grad_(False)
    for encoder in text_encoders(pipe):
        encoder.requires_grad_(False)
    call = conditioned(unet)

    def condition() -> Condition:
        rows = iter(zip(ids, learnt))

        def inputs(_tokenizer, table):
            token_ids, row = next(rows)
            fixed = table(token_ids.to(unet.device))
            return token_ids, torch.cat([fixed[:, :position], row[None, None], fixed[:, position + 1 :]], dim=1)

        return encode_inputs(pipe, inputs)

    for _ in range(steps):
        noise = torch.randn(x0.shape, generator=generator).to(unet.device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=generator).to(unet.device)
        a = alphas[t].view(-1, 1, 1, 1)
        prediction = call(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, condition().repeat(len(x0))).sample
        loss = (prediction - _target(scheduler, x0, noise, t)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        images = _sample(pipe, condition().repeat(seeds), _seeds(f"textual-inversion|{concept}", seeds, 0), sampler)
    drawn = _hits(judge, images, head, concept)
    return {"draws": float(drawn.mean()), "n": int(len(drawn)), "steps": steps, "final_loss": float(loss.detach())}


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
        "textual_inversion": None if x0 is None else textual_inversion(pipe, x0, judge, **common),
    }
