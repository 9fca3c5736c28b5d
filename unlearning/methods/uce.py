"""UCE (Gandikota et al., "Unified Concept Editing in Diffusion Models", WACV 2024, sec. 3): a
closed-form edit of the cross-attention key and value projections, no training steps.

Every attn2 to_k / to_v weight W is a linear map from text-token embeddings. With c_i the tokens of
the target prompts, c*_i their counterparts in the anchor prompts (the edit target v*_i = W_old c*_i),
c_j the tokens of the preserve and replay prompts, scales s_e, s_p and a ridge λ that keeps W near
W_old, the edit solves

    min_W  s_e Σ_i ‖W c_i − v*_i‖² + s_p Σ_j ‖W c_j − W_old c_j‖² + λ ‖W − W_old‖²_F

whose minimiser (set the gradient to zero) is the paper's closed form with its λ term:

    W = (s_e Σ_i v*_i c_iᵀ + s_p Σ_j W_old c_j c_jᵀ + λ W_old)(s_e Σ_i c_i c_iᵀ + s_p Σ_j c_j c_jᵀ + λ I)⁻¹

Since every v* and preserve value is W_old times a token embedding, this is W_old · R with one
matrix R = (s_e Σ c*_i c_iᵀ + s_p Σ c_j c_jᵀ + λI)(s_e Σ c_i c_iᵀ + s_p Σ c_j c_jᵀ + λI)⁻¹ shared by
every edited layer. A bias, if any, cancels from both sides and is left alone.

Which tokens: the text encoder may be bidirectional (the shapes world's MiniLM) and the UNet attends
to every position, padding included, so every token of a target prompt carries the concept. All of
them are edited, paired with the anchor prompt's tokens (see `aligned_pairs`); the preserve set is
every token of the preserve and replay prompts (the replay prompts keep earlier erasures in place).
Defaults are the authors' (erase scale 1, preserve scale 0.1, λ 0.1). Edits attn2 K/V only
(`xattn-kv`), so the loop refuses any other parameter set for it.

Architectures: the token embeddings are what attn2 reads (unlearning/conditioning.py): SD1.x/2.x's one
encoder's last hidden state (768 / 1024 wide), SDXL's two encoders' penultimate states concatenated (2048).
SDXL's pooled embedding is left alone: it enters through `add_embedding` as one vector added to the
timestep embedding — a global bias with no per-token path, so no K/V pair of the concept exists there to
map (continual_uce.py says what that leaves, and that the gate measures it).

An MMDiT (SD3, FLUX: no attn2) is edited on its `text-proj` set (unlearning/parameters.py), the two maps
that see the text alone. `context_embedder` maps the joint text tokens (SD3: the CLIP pair's penultimate
states concatenated, padded and joined with T5's tokens along the sequence; FLUX: T5's tokens) into the
transformer's width: a map of token embeddings exactly like a K/V weight, solved from the same token pairs.
The pooled projection `time_text_embed.text_embedder.linear_1` maps one pooled embedding per prompt (SD3:
both CLIPs' pooled, concatenated; FLUX: CLIP-L's), so its pairs are the prompts' own: the target prompt's
pooled embedding p_i to W_old times the anchor prompt's p*_i, the preserve and replay prompts' pooled
embeddings kept. The same closed form in the pooled space (R_pooled from those pairs) gives
linear_1(p_i) = linear_1_old(p*_i); everything after it (SiLU, linear_2, the AdaLN of every block) is
untouched. Per-block `add_k_proj`/`add_v_proj` are left alone: they read the text stream after the
timestep's modulation and, past the first block, after joint attention with the image tokens, so no
text-only pairs exist for them.
"""

from __future__ import annotations

import torch

from unlearning.methods.context import EditContext

KIND = "edit"
PARAMS = "xattn-kv"  # the only set a K/V edit can touch
DEFAULTS = {"erase_scale": 1.0, "preserve_scale": 0.1, "lambda_identity": 0.1}
MMDIT_PARAMS = "text-proj"  # an MMDiT's projections that see the text alone (unlearning/parameters.py)
EDITABLE = (".attn2.to_k.weight", ".attn2.to_v.weight", "context_embedder.weight")  # maps of token embeddings
POOLED = ("time_text_embed.text_embedder.linear_1.weight",)  # an MMDiT's map of the pooled embedding


def aligned_pairs(
    target_embeds: torch.Tensor,
    anchor_embeds: torch.Tensor,
    target_tokens: torch.Tensor,
    anchor_tokens: torch.Tensor,
    segments: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_i, c*_i) token-embedding pairs, (N, D) each, from prompt pairs (B, T, D) that differ only in
    the concept word: tokens before the word pair by position, tokens after it by their offset from
    the word's end, and the word's own tokens pair with the mean of the anchor word's tokens — or, with
    an empty anchor, with the token before the gap (as UCE maps a concept erased "to nothing" onto the
    start token). A prompt whose word was not found gives no pair. `segments`: the lengths of the sequence's
    parts, one per encoder (SD3: CLIP's 77 tokens, then T5's), each paired on its own; () is one part."""
    if len(segments) > 1:
        split = [x.split(list(segments), dim=1) for x in (target_embeds, anchor_embeds, target_tokens, anchor_tokens)]
        parts = [aligned_pairs(*part) for part in zip(*split)]
        return torch.cat([keys for keys, _ in parts]), torch.cat([values for _, values in parts])
    length = target_embeds.shape[1]
    positions = torch.arange(length, device=target_embeds.device)
    keys, values = [], []
    for c, c_star, word, anchor_word in zip(target_embeds, anchor_embeds, target_tokens, anchor_tokens):
        where, anchor_where = word.nonzero().flatten(), anchor_word.nonzero().flatten()
        if where.numel() == 0:
            continue
        start, end = int(where[0]), int(where[-1]) + 1
        if anchor_where.numel():
            anchor_end, anchor_span = int(anchor_where[-1]) + 1, anchor_where
        else:
            anchor_end, anchor_span = start, positions[max(start - 1, 0) : max(start, 1)]
        source = torch.where(positions < start, positions, positions - end + anchor_end)
        context = (positions < start) | ((positions >= end) & (source < length))
        keys += [c[context], c[start:end]]
        values += [c_star[source[context]], c_star[anchor_span].mean(0, keepdim=True).expand(end - start, -1)]
    if not keys:  # no prompt of this part holds the word
        return target_embeds.new_zeros(0, target_embeds.shape[-1]), anchor_embeds.new_zeros(0, target_embeds.shape[-1])
    return torch.cat(keys), torch.cat(values)


def closed_form(
    weight: torch.Tensor,
    erase_keys: torch.Tensor,
    anchor_keys: torch.Tensor,
    preserve_keys: torch.Tensor,
    *,
    erase_scale: float,
    preserve_scale: float,
    lambda_identity: float,
) -> torch.Tensor:
    """W_old · R (module docstring): rows of `erase_keys` are c_i, of `anchor_keys` c*_i, of
    `preserve_keys` c_j. Solved in float64, returned in the weight's dtype."""
    c, c_star, p = (x.double() for x in (erase_keys, anchor_keys, preserve_keys))
    identity = torch.eye(c.shape[1], dtype=torch.float64, device=c.device)
    keep = preserve_scale * p.T @ p + lambda_identity * identity
    left = erase_scale * c_star.T @ c + keep  # Σ c*_i c_iᵀ: W_old times it is Σ v*_i c_iᵀ
    right = erase_scale * c.T @ c + keep  # symmetric, so R = left · right⁻¹ = solve(right, leftᵀ)ᵀ
    shared = torch.linalg.solve(right, left.T).T
    return (weight.double() @ shared).to(weight.dtype)


@torch.no_grad()
def edit(ctx: EditContext) -> dict[str, float]:
    """Apply the closed form to every trained weight in place: token maps (attn2 K/V, an MMDiT's
    `context_embedder`) from the aligned token pairs, an MMDiT's pooled projection from the prompts' pooled
    embeddings (module docstring). Returns how far the edit got: `erase_residual` = Σ‖W c_i − v*_i‖² after /
    before (0: erased exactly), `preserve_drift` = Σ‖W c_j − W_old c_j‖² / Σ‖W_old c_j‖², over the token maps;
    `pooled_erase_residual`, `pooled_preserve_drift` the same over the pooled projection, where it is edited.

    Raises:
        ValueError: a trained tensor that is none of these weights; a pooled projection without the pooled
            embeddings of the target, anchor and preserve prompts.
    """
    hyper = {**DEFAULTS, **ctx.hyper}
    if others := [name for name in ctx.trained if not name.endswith(EDITABLE + POOLED)]:
        raise ValueError(
            f"UCE edits attn2 to_k/to_v (an MMDiT: its text projections) only, not {', '.join(others[:3])}"
        )
    keys, anchors = aligned_pairs(
        ctx.target_embeds, ctx.anchor_embeds, ctx.target_tokens, ctx.anchor_tokens, ctx.segments
    )
    # the parent's images of earlier concepts are kept as they are (already erased in the parent)
    kept = torch.cat([ctx.preserve_embeds, ctx.replay_embeds])
    spaces = {"": (keys, anchors, kept.reshape(-1, kept.shape[-1]))}  # prefix of its metrics -> its pairs
    if any(name.endswith(POOLED) for name in ctx.trained):
        if ctx.target_pooled is None or ctx.anchor_pooled is None or ctx.preserve_pooled is None:
            raise ValueError("UCE edits an MMDiT's pooled projection from the prompts' pooled embeddings; none given")
        replay = ctx.replay_pooled if ctx.replay_pooled is not None else ctx.preserve_pooled[:0]
        spaces["pooled_"] = (ctx.target_pooled, ctx.anchor_pooled, torch.cat([ctx.preserve_pooled, replay]))
    sums = {prefix: [0.0, 0.0, 0.0, 0.0] for prefix in spaces}  # erase before, after, drift, preserved
    for name, weight in ctx.trained.items():
        prefix = "pooled_" if name.endswith(POOLED) else ""
        keys, anchors, preserve = spaces[prefix]
        old = weight.detach().clone()
        weight.copy_(
            closed_form(
                old,
                keys,
                anchors,
                preserve,
                erase_scale=hyper["erase_scale"],
                preserve_scale=hyper["preserve_scale"],
                lambda_identity=hyper["lambda_identity"],
            )
        )
        target_values = anchors @ old.T
        total = sums[prefix]
        total[0] += float((keys @ old.T - target_values).pow(2).sum())
        total[1] += float((keys @ weight.T - target_values).pow(2).sum())
        total[2] += float((preserve @ (weight - old).T).pow(2).sum())
        total[3] += float((preserve @ old.T).pow(2).sum())
    metrics = {}
    for prefix, (before, after, drift, preserved) in sums.items():
        metrics[f"{prefix}erase_residual"] = after / max(before, 1e-20)
        metrics[f"{prefix}preserve_drift"] = drift / max(preserved, 1e-20)
    return metrics
