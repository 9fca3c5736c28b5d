"""Trainable parameter sets (DESIGN.md): which UNet tensors an unlearning step may change.

- `xattn-kv` (default): the key and value projections of cross-attention (attn2 to_k, to_v) — the
  only path from text to image, as in ESD-x, Concept Ablation and UCE;
- `xattn`: every cross-attention projection (attn2 to_q, to_k, to_v, to_out);
- `non-xattn`: every UNet parameter *except* cross-attention (attn2) — the "unconditional" weights
  ESD-u trains (Gandikota et al. ICCV 2023, sec. 3); the ESD code also leaves the time embedding and
  the output layer frozen, this set follows the paper's wording and trains them;
- `full`: every UNet parameter.
(`lora`, low-rank adapters on attn2, comes with the unlearning-core issue's LoRA work.)
"""

from __future__ import annotations

import torch

PARAMETER_SETS = ("xattn-kv", "xattn", "non-xattn", "full")


def trainable_names(unet: torch.nn.Module, parameter_set: str) -> list[str]:
    """Names of the UNet parameters a set trains.

    Raises:
        ValueError: unknown set, or a set that matches nothing in this UNet.
    """
    names = [name for name, _ in unet.named_parameters()]
    if parameter_set == "xattn-kv":
        chosen = [n for n in names if ".attn2.to_k." in n or ".attn2.to_v." in n]
    elif parameter_set == "xattn":
        chosen = [n for n in names if ".attn2." in n]
    elif parameter_set == "non-xattn":
        chosen = [n for n in names if ".attn2." not in n]
    elif parameter_set == "full":
        chosen = names
    else:
        raise ValueError(f"unknown parameter set {parameter_set!r}; known: {', '.join(PARAMETER_SETS)}")
    if not chosen:
        raise ValueError(f"parameter set {parameter_set!r} matches no parameter of this UNet")
    return chosen


def freeze_all_but(unet: torch.nn.Module, names: list[str]) -> list[torch.nn.Parameter]:
    """Freeze the UNet except `names`; returns the trainable parameters in `names` order."""
    wanted = set(names)
    params = dict(unet.named_parameters())
    for name, param in params.items():
        param.requires_grad_(name in wanted)
    return [params[n] for n in names]
