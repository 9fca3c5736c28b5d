"""DUGE-style decremental step: cross-attention loss + prior preservation + base-anchored regularisation.

The DUGE paper names its three losses but does not publish their formulas; this is Lethe's definition
(docs/design.md, "The method"), with θ the student, θ_p the frozen parent, θ_0 the frozen base:

1. Cross-attention loss, on z_t noised from the parent's images of the *anchor* prompt:
       L_ca = ‖ε_θ(z_t, c_tgt) − sg ε_p(z_t, c_anc)‖²
              + λ_attn Σ_l ‖Ā_θ^l(z_t, c_tgt)[tgt] − sg Ā_p^l(z_t, c_anc)[anc]‖²
   where Ā^l[tokens] is layer l's cross-attention map (mean over heads) averaged over the concept's
   tokens: the student must look at "circle" where the parent looked at "square". With an empty anchor
   the target-token attention is driven to 0.
2. Prior preservation, on z_t from the parent's images of preserve and replay prompts (the replay set
   holds every concept erased earlier, so the parent's erasures are kept — no rebound):
       L_pp = ‖ε_θ(z_t, c) − sg ε_p(z_t, c)‖²
3. Regularisation against generalisation erosion, anchored at the base, not the parent (drift
   accumulates across requests — CUIG, ICLR 2026), L2-SP (Li et al. 2018, eq. 3) normalised per element:
       L_reg = Σ_k ‖θ_k − θ_0,k‖² / Σ_k |θ_k|

Returns the "forget" term (L_ca), the "preserve" term (λ_pp L_pp) and the "regularise" term
(λ_reg L_reg) separately, so the loop can apply gradient surgery between forget and preserve.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearning.methods.context import StepContext

KIND = "loss"
PARAMS = "xattn-kv"
DEFAULTS = {
    "lambda_attn": 1.0,
    "lambda_pp": 1.0,
    "lambda_reg": 10.0,
}  # 100 outweighed the forget term (bench/RESULTS.md)


def concept_attention(maps: dict[str, torch.Tensor], tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per layer, the attention each query pays to the concept's tokens, averaged over those tokens:
    (B, queries). Rows without concept tokens give zeros."""
    weights = tokens.float() / tokens.float().sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, T)
    return {name: torch.einsum("bqt,bt->bq", m, weights.to(m.dtype)) for name, m in maps.items()}


def attention_loss(student_maps, parent_maps, target_tokens, anchor_tokens) -> torch.Tensor:
    student = concept_attention(student_maps, target_tokens)
    parent = concept_attention(parent_maps, anchor_tokens)
    terms = [
        F.mse_loss(student[name], parent[name].detach(), reduction="sum") / student[name].shape[0] for name in student
    ]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def l2_sp(trained: dict[str, torch.nn.Parameter], base_values: dict[str, torch.Tensor]) -> torch.Tensor:
    squared = sum((param - base_values[name]).pow(2).sum() for name, param in trained.items())
    return squared / sum(param.numel() for param in trained.values())


def loss(ctx: StepContext, *, forget_target=None) -> dict[str, torch.Tensor]:
    """The three terms (module docstring). `forget_target` (a method built on this one) may replace the
    parent's anchor prediction ε_p(z_t, c_anc) by another target, given it."""
    hyper = {**DEFAULTS, **ctx.hyper}
    with torch.no_grad():
        ctx.parent_maps.clear()
        parent_eps = ctx.parent(ctx.forget_noisy, ctx.forget_timesteps, ctx.anchor_embeds).sample
        parent_maps = dict(ctx.parent_maps.maps)
        if forget_target is not None:
            parent_eps = forget_target(parent_eps)
    ctx.student_maps.clear()
    student_eps = ctx.student(ctx.forget_noisy, ctx.forget_timesteps, ctx.target_embeds).sample
    forget_eps = F.mse_loss(student_eps, parent_eps)
    forget_attn = attention_loss(ctx.student_maps.maps, parent_maps, ctx.target_tokens, ctx.anchor_tokens)

    with torch.no_grad():
        parent_keep = ctx.parent(ctx.preserve_noisy, ctx.preserve_timesteps, ctx.preserve_embeds).sample
    student_keep = ctx.student(ctx.preserve_noisy, ctx.preserve_timesteps, ctx.preserve_embeds).sample
    preserve = F.mse_loss(student_keep, parent_keep)
    regularise = l2_sp(ctx.trained, ctx.base_values)
    return {
        "forget": forget_eps + hyper["lambda_attn"] * forget_attn,
        "preserve": hyper["lambda_pp"] * preserve,
        "regularise": hyper["lambda_reg"] * regularise,
        "log/ca_eps": forget_eps.detach(),
        "log/ca_attn": forget_attn.detach(),
        "log/pp": preserve.detach(),
        "log/reg": regularise.detach(),
    }
