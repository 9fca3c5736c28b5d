"""ESD-x (Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023, eq. 2 / sec. 3):
fine-tune cross-attention so that the conditional prediction for the concept follows *negative
guidance* away from it, computed with the frozen parent θ*:

    ε_θ(z_t, c, t)  →  ε_θ*(z_t, t) − η [ε_θ*(z_t, c, t) − ε_θ*(z_t, t)]
    L = ‖ε_θ(z_t, c_tgt, t) − sg(ε_p(z_t, ∅, t) − η (ε_p(z_t, c_tgt, t) − ε_p(z_t, ∅, t)))‖²

No preservation and no regularisation term (the baseline the sequence benchmark compares against);
the paper trains attn2 only for ESD-x (`--params xattn`). z_t comes from the parent's images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearning.methods.context import StepContext

KIND = "loss"
PARAMS = "xattn-kv"  # the paper trains all attn2; K/V keeps the comparison with duge like for like
DEFAULTS = {"eta": 1.0}


def loss(ctx: StepContext) -> dict[str, torch.Tensor]:
    eta = {**DEFAULTS, **ctx.hyper}["eta"]
    with torch.no_grad():
        unconditional = ctx.parent(ctx.forget_noisy, ctx.forget_timesteps, ctx.empty_embeds).sample
        conditional = ctx.parent(ctx.forget_noisy, ctx.forget_timesteps, ctx.target_embeds).sample
        negative_guidance = unconditional - eta * (conditional - unconditional)
    student = ctx.student(ctx.forget_noisy, ctx.forget_timesteps, ctx.target_embeds).sample
    term = F.mse_loss(student, negative_guidance)
    return {"forget": term, "log/esd": term.detach()}
