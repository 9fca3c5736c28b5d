"""Concept Ablation, model-based variant (Kumari et al., "Ablating Concepts in Text-to-Image Diffusion
Models", ICCV 2023, sec. 3): make the model's distribution for the target prompt match the one the
frozen parent gives the *anchor* prompt ("a circle" → "a shape"). On z_t noised from the parent's
images of the anchor prompt (the loop's forget batch):

    L_abl = ‖ε_θ(z_t, c_tgt, t) − sg ε_p(z_t, c_anc, t)‖²

plus the paper's regularisation, the standard diffusion loss on the anchor pairs themselves (it keeps
the anchor concept intact while its prompt is being copied into the target's):

    L_anc = ‖ε_θ(z_t, c_anc, t) − ε‖²          (ε: the noise that made z_t; for a v-prediction model the
                                               velocity, `ctx.forget_target`)

Returns "forget" (L_abl) and "preserve" (λ_anchor L_anc); the paper trains attn2 K/V (`xattn-kv`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearning.methods.context import StepContext

KIND = "loss"
PARAMS = "xattn-kv"
DEFAULTS = {"lambda_anchor": 1.0}


def loss(ctx: StepContext) -> dict[str, torch.Tensor]:
    lambda_anchor = {**DEFAULTS, **ctx.hyper}["lambda_anchor"]
    with torch.no_grad():
        anchor_target = ctx.parent(ctx.forget_noisy, ctx.forget_timesteps, ctx.anchor_embeds).sample
    student_target = ctx.student(ctx.forget_noisy, ctx.forget_timesteps, ctx.target_embeds).sample
    ablate = F.mse_loss(student_target, anchor_target)
    student_anchor = ctx.student(ctx.forget_noisy, ctx.forget_timesteps, ctx.anchor_embeds).sample
    anchor = F.mse_loss(student_anchor, ctx.forget_target)
    return {
        "forget": ablate,
        "preserve": lambda_anchor * anchor,
        "log/ablate": ablate.detach(),
        "log/anchor": anchor.detach(),
    }
