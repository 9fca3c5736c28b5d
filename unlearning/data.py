"""The data of an unlearning step (unlearning/loop.py): the parent's images of the request's prompts as
latents, cached on disk, and the prompts' text embeddings as a Gram and as a concept's pairs (each prompt's
own condition: unlearning/conditioning.py `encode`).

The loop's config (unlearning/config.py) names the prompts' sizes and the sampler; the world builds the
prompts (unlearning/world.py). A closed-form method needs no images: only the embeddings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from unlearning.conditioning import MMDIT, architecture, encode, width, word_tokens
from unlearning.config import UnlearnConfig
from unlearning.files import save_torch
from unlearning.methods import get_method
from unlearning.methods.context import EncodedPairs
from unlearning.prompts import ConceptPairs, RequestPrompts, broad_prompts, variant_prompts
from unlearning.sampling import initial_noise


def _latents_key(model_sha: str, prompt: str, seed: int, steps: int, guidance: float) -> str:
    return hashlib.sha256(json.dumps([model_sha, prompt, seed, steps, guidance]).encode()).hexdigest()


@torch.no_grad()
def parent_latents(
    pipe, prompts: list[str], seeds: list[int], *, model_sha: str, steps: int, guidance: float, cache_dir: Path | None
) -> torch.Tensor:
    """Latents of the images the parent generates for `prompts` (the UNet's own latent space),
    cached on disk by (model sha256, prompt, seed, sampler)."""
    keys = [_latents_key(model_sha, p, s, steps, guidance) for p, s in zip(prompts, seeds)]
    found: list[torch.Tensor | None] = []
    for key in keys:
        path = cache_dir / f"{key}.pt" if cache_dir else None
        found.append(torch.load(path) if path and path.is_file() else None)
    missing = [i for i, latent in enumerate(found) if latent is None]
    for start in range(0, len(missing), 32):
        chunk = missing[start : start + 32]
        out = pipe(
            [prompts[i] for i in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=initial_noise(pipe, [seeds[i] for i in chunk]),
            output_type="latent",
        ).images
        for i, latent in zip(chunk, out):
            found[i] = latent.float().cpu()
            if cache_dir:
                save_torch(cache_dir / f"{keys[i]}.pt", found[i])
    return torch.stack(found)


def _data_seeds(cfg: UnlearnConfig, prompts: RequestPrompts) -> tuple[list[int], list[int]]:
    keep = len(prompts.preserve) + len(prompts.replay)
    return (
        [cfg.seed * 100_003 + i for i in range(len(prompts.anchor))],
        [cfg.seed * 100_003 + 50_000 + i for i in range(keep)],
    )


def prepare_data(
    pipe, cfg: UnlearnConfig, prompts: RequestPrompts, *, model_sha: str, cache_dir: Path | None, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The training data of a loss method: latents of the parent's images for the anchor prompts (the
    forget batch is noised from them) and for the preserve + replay prompts, cached on disk by (parent,
    prompt, seed, sampler). None for a closed-form method, which needs no images."""
    if get_method(cfg.method).KIND == "edit":
        return None
    seeds_forget, seeds_keep = _data_seeds(cfg, prompts)
    bar = tqdm(total=2, desc=f"parent images for {cfg.concept}", disable=not progress)
    forget = parent_latents(
        pipe,
        prompts.anchor,
        seeds_forget,
        model_sha=model_sha,
        steps=cfg.data_steps,
        guidance=cfg.guidance_scale,
        cache_dir=cache_dir,
    )
    bar.update()
    keep = parent_latents(
        pipe,
        prompts.preserve + prompts.replay,
        seeds_keep,
        model_sha=model_sha,
        steps=cfg.data_steps,
        guidance=cfg.guidance_scale,
        cache_dir=cache_dir,
    )
    bar.update()
    bar.close()
    return forget, keep


def gram(pipe, prompts: list[str], *, pooled: bool = False) -> torch.Tensor:
    """Σ e eᵀ over every token of `prompts` (padding included, as the UNet attends to it), float64; with
    `pooled`, over the prompts' pooled embeddings (an MMDiT's pooled projection reads one per prompt)."""
    total = 0
    for start in range(0, max(len(prompts), 1), 256):
        condition = encode(pipe, prompts[start : start + 256])  # no prompts: an empty batch of the right widths
        rows = (condition.pooled if pooled else condition.hidden.reshape(-1, width(pipe))).double()
        total = total + rows.T @ rows
    return total


def broad_gram(pipe, prompts: list[str], *, pooled: bool = False, base_sha: str | None, cache_dir: Path | None):
    """`gram` of a method's broad prompts, cached on disk by (the base's sha256, the prompts): every version
    of a lineage encodes them with the base's text encoders (no version edits them), so every request's G
    is the same, and encoding 1000 prompts was a third of a closed form's step on a CPU. Computed, not
    cached, without a base identity or a cache folder."""
    if base_sha is None or cache_dir is None:
        return gram(pipe, prompts, pooled=pooled)
    key = hashlib.sha256(json.dumps([base_sha, pooled, prompts]).encode()).hexdigest()
    path = cache_dir / f"gram-{key}.pt"
    if path.is_file():
        return torch.load(path)
    found = gram(pipe, prompts, pooled=pooled)
    save_torch(path, found)
    return found


def relocation_prompts(method, tokenizer, cfg: UnlearnConfig) -> list[str]:
    """The prompts whose tokens a closed form searches for the tokens its edit pushes towards an erased concept
    (continual_uce.py `relocation_rounds`): the method's `RELOCATION_POOL` broad prompts, drawn apart from G's
    (seed + 1), and `relocation_variants` prompts of the method-half words' rule-made variants (word pieces,
    letters: prompts.py `variant_prompts`); none where the method has no such rounds or they are off."""
    if not cfg.hyper.get("relocation_rounds") or not getattr(method, "RELOCATION_POOL", 0):
        return []
    prompts = broad_prompts(tokenizer, method.RELOCATION_POOL, seed=cfg.seed + 1)
    return prompts + variant_prompts(tokenizer, int(cfg.hyper.get("relocation_variants", 0)), seed=cfg.seed + 1)


@torch.no_grad()
def relocation_inputs(pipe, method, cfg: UnlearnConfig, drawn_by_parent=None):
    """(`relocation_prompts`' token embeddings (N, T, D), and with `drawn_by_parent` their `rows_drawn` screen —
    EditContext.relocation_pool and .relocation_drawn); Nones where there are no such prompts or no judge."""
    prompts = relocation_prompts(method, pipe.tokenizer, cfg)
    if not prompts:
        return None, None
    pool = encode(pipe, prompts).hidden
    return pool, None if drawn_by_parent is None else rows_drawn(prompts, pool.shape[1], drawn_by_parent)


def relocation_pool(pipe, method, cfg: UnlearnConfig) -> torch.Tensor | None:
    """`relocation_inputs`' token embeddings alone."""
    return relocation_inputs(pipe, method, cfg)[0]


def rows_drawn(prompts: list[str], tokens: int, drawn_by_parent) -> Callable[[torch.Tensor], torch.Tensor]:
    """EditContext.relocation_drawn over a pool of `prompts` encoded `tokens` rows each: for a boolean mask over
    the pool's rows, which of them belong to a prompt `drawn_by_parent` says the parent draws the concept for
    (a list of prompts → one bool each). Each prompt is judged once, when a row of it is first asked about."""
    verdicts: dict[int, bool] = {}

    def drawn(rows: torch.Tensor) -> torch.Tensor:
        index = rows.nonzero().squeeze(1) // tokens
        new = sorted(set(index.tolist()) - verdicts.keys())
        if new:
            verdicts.update(zip(new, (bool(v) for v in drawn_by_parent([prompts[i] for i in new]))))
        found = torch.zeros_like(rows)
        found[rows] = torch.tensor([verdicts[i] for i in index.tolist()], dtype=torch.bool, device=rows.device)
        return found

    return drawn


def encode_pairs(pipe, pairs: ConceptPairs) -> EncodedPairs:
    """A concept's target/anchor prompt pairs as the token embeddings cross-attention maps (a closed form's
    pairs: unlearning/conditioning.py `Condition.hidden`) and word-token masks; on an MMDiT (SD3, FLUX) with
    the prompts' pooled embeddings, which its pooled projection reads."""
    target, anchor = encode(pipe, pairs.target), encode(pipe, pairs.anchor)
    mmdit = architecture(pipe) in MMDIT
    return EncodedPairs(
        pairs.concept,
        target.hidden,
        anchor.hidden,
        word_tokens(pipe, pairs.target, pairs.target_words),
        word_tokens(pipe, pairs.anchor, pairs.anchor_words),
        pairs.anchor_words[0] if pairs.anchor_words else "",
        target_pooled=target.pooled if mmdit else None,
        anchor_pooled=anchor.pooled if mmdit else None,
    )
