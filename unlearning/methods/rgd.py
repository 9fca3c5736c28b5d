"""RGD: restricted gradient with a diversified retain set (Ko et al., "Boosting Alignment for
Post-Unlearning Text-to-Image Generative Models", NeurIPS 2024, sec. 3).

Forget term: gradient *ascent* on the denoising loss of the target prompts,

    L_f = ‖ε_θ(z_t, c_tgt, t) − ε‖²,    forget = −min(L_f, m)

Ascent is unbounded, so it is truncated as in the authors' code: once L_f exceeds m its gradient is
zero (`clamp`), i.e. the model stops being pushed further from denoising the target. Retain term: the
plain denoising loss on the diversified retain set (the loop's preserve + replay prompts, images made
by the parent), weighted by α:

    preserve = α ‖ε_θ(z_r, c_r, t) − ε_r‖²

The update is the restricted gradient: where ∇forget and ∇preserve conflict, ∇forget is projected
onto the normal plane of ∇preserve. RGD sets `ALWAYS_SURGERY`, so the loop always
applies `surgery_backward` (unlearning/surgery.py). Two departures from the paper, both forced by the shared pieces:
- the paper also projects ∇preserve off ∇forget (symmetric PCGrad); the loop's surgery projects only
  the forget gradient, which keeps the retain gradient whole;
- the paper's forget data are images *of* the target; the loop's forget batch holds z_t noised from
  the parent's images of the *anchor* prompt, so ascent raises the target prompt's denoising error on
  those (same scene, concept swapped for the anchor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearning.methods.context import StepContext

KIND = "loss"
PARAMS = "xattn-kv"
ALWAYS_SURGERY = True  # restricted gradient is the method, not an option
DEFAULTS = {"alpha": 1.5, "forget_bound": 1.5}  # the authors' defaults for α and the truncation m


def loss(ctx: StepContext) -> dict[str, torch.Tensor]:
    hyper = {**DEFAULTS, **ctx.hyper}
    student_forget = ctx.student(ctx.forget_noisy, ctx.forget_timesteps, ctx.target_embeds).sample
    forget_denoising = F.mse_loss(student_forget, ctx.forget_target)  # ε, or v for a v-prediction model
    student_retain = ctx.student(ctx.preserve_noisy, ctx.preserve_timesteps, ctx.preserve_embeds).sample
    retain = F.mse_loss(student_retain, ctx.preserve_target)
    return {
        "forget": -forget_denoising.clamp(max=hyper["forget_bound"]),
        "preserve": hyper["alpha"] * retain,
        "log/forget_denoising": forget_denoising.detach(),
        "log/retain": retain.detach(),
    }
