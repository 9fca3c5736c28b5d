"""Domain correction (DoCo; Wu et al., "Unlearning Concepts in Diffusion Model via Concept Domain
Correction and Concept Preserving Gradient", AAAI 2025): an option of the `duge` step.

A small latent discriminator D is trained to tell the parent's output under the *anchor* prompt
("real") from the student's output under the *target* prompt ("fake"), on the same noised latents z_t
of the forget batch; the student is trained to fool it. Where L_ca matches the two outputs sample by
sample, the adversarial term aligns their *distributions* (the paper's "output domains"), which is
what it credits for erasure that generalises to prompts outside the training set.

What D sees: the UNet's output ε (4 latent channels), as in the DoCo code (a PatchGAN on the noise
prediction). ε is numerically stable at every t, where the predicted x0 = (z_t − √(1−ᾱ_t) ε)/√ᾱ_t blows
up at high noise. D is a few strided convolutions without normalisation (batches are small; no
running statistics to checkpoint) ending in a map of patch logits.

Losses (non-saturating GAN, Goodfellow et al. 2014), with logits r = D(ε_p(z_t, c_anc)), f = D(ε_θ(z_t, c_tgt)):
    L_D   = mean softplus(−r) + mean softplus(f)        (= BCE(r, 1) + BCE(f, 0))
    L_adv = mean softplus(−f)                           (= BCE(f, 1)), added to the forget term as λ_domain·L_adv
The loop takes D's step after the student's, on detached outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearning.methods.context import StepContext

DEFAULTS = {
    "lambda_domain": 0.1,  # weight of L_adv in the forget term (untuned)
    "domain_lr": 1e-4,  # Adam learning rate of the discriminator, betas (0.5, 0.999) as usual for GANs
}


def make_discriminator(channels: int, *, seed: int, width: int = 64) -> torch.nn.Sequential:
    """D: latents (B, channels, H, W) -> patch logits (B, 1, H/4, W/4). Its initial weights are drawn
    from `seed` without touching the global RNG (a run and its resumed run build the same D)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Conv2d(channels, width, 4, stride=2, padding=1),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(2 * width, 1, 3, padding=1),
        )


def make_optimizer(discriminator: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.999))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = mean softplus(−r) + mean softplus(f): real (parent, anchor) -> 1, fake (student, target) -> 0."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_adv = mean softplus(−f): the student's target outputs should be taken for anchor outputs."""
    return F.softplus(-fake_logits).mean()


def outputs(ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(fake, real): the student's ε(z_t, c_tgt), with gradient, and the parent's ε_p(z_t, c_anc), without,
    on the forget batch. (Two extra UNet passes a step: the method's own loss does not hand out its outputs.)"""
    with torch.no_grad():
        real = ctx.parent(ctx.forget_noisy, ctx.forget_timesteps, ctx.anchor_embeds).sample
    fake = ctx.student(ctx.forget_noisy, ctx.forget_timesteps, ctx.target_embeds).sample
    return fake, real


def discriminator_step(
    discriminator: torch.nn.Module, optimizer: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor
) -> torch.Tensor:
    """One update of D on detached outputs (fp32); returns L_D before the update."""
    loss = discriminator_loss(discriminator(real.detach().float()), discriminator(fake.detach().float()))
    optimizer.zero_grad(set_to_none=True)  # also drops what L_adv's backward left in D
    loss.backward()
    optimizer.step()
    return loss.detach()
