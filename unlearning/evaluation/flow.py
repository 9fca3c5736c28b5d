"""The flow-matching half of the attack's loss (unlearning/evaluation/attack.py), for an MMDiT pipeline (SD3,
FLUX) whose scheduler is diffusers' `FlowMatchEulerDiscreteScheduler`.

A rectified flow (Liu et al., "Flow straight and fast", ICLR 2023; as SD3 trains it, Esser et al., "Scaling
rectified flow transformers for high-resolution image synthesis", ICML 2024, sec. 2–3) joins the data x₀ and
the noise ε on a straight line,

    x_σ = (1 − σ) x₀ + σ ε,   σ ∈ (0, 1],

and the transformer predicts its velocity v = dx_σ/dσ = ε − x₀ (the Euler sampler steps x along −v from σ = 1
to 0). So where a UNet's loss is ‖ε − ε_θ(x_t, t, c)‖², a flow model's is ‖(ε − x₀) − v_θ(x_σ, σ, c)‖².
"""

from __future__ import annotations

import torch


def training_sigmas(scheduler) -> torch.Tensor:
    """The noise levels the scheduler's model is trained on: σ = t / T for t = T…1 (T = `num_train_timesteps`),
    shifted as its config shifts them (SD3: σ' = sσ / (1 + (s − 1)σ), s = 3; FLUX shifts by image size at
    sampling only, `use_dynamic_shifting`, so its grid stays unshifted). Read from a fresh scheduler: a pipeline
    call's `set_timesteps` overwrites `scheduler.sigmas` with its few sampling steps."""
    return type(scheduler).from_config(scheduler.config).sigmas.float()


def flow_noised(
    scheduler, x0: torch.Tensor, noise: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_σ, σ, ε − x₀) for a σ drawn uniformly from `training_sigmas` per row — the flow-matching counterpart
    of UnlearnDiffAtk's t drawn uniformly over the training timesteps (module docstring)."""
    sigmas = training_sigmas(scheduler)
    sigma = sigmas[torch.randint(0, len(sigmas), (len(x0),), generator=generator)].to(x0.device)
    s = sigma.view(-1, *[1] * (x0.dim() - 1))  # SD3's (B, C, h, w) and FLUX's packed (B, patches, 4C)
    return (1 - s) * x0 + s * noise, sigma, noise - x0
