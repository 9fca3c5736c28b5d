"""Trainable parameter sets (docs/design.md): which UNet tensors an unlearning step may change.

- `xattn-kv` (default): the key and value projections of cross-attention (attn2 to_k, to_v) — the
  only path from text to image, as in ESD-x, Concept Ablation and UCE;
- `xattn`: every cross-attention projection (attn2 to_q, to_k, to_v, to_out);
- `non-xattn`: every UNet parameter *except* cross-attention (attn2) — the "unconditional" weights
  ESD-u trains (Gandikota et al. ICCV 2023, sec. 3); the ESD code also leaves the time embedding and
  the output layer frozen, this set follows the paper's wording and trains them;
- `full`: every UNet parameter;
- `lora`: low-rank adapters (peft LoRA, Hu et al. ICLR 2022) on the attn2 projections to_q, to_k, to_v,
  to_out.0. Only the adapters train; at save time they are merged, W ← W + (α/r)·B A, and the delta
  covers those merged weight tensors (the names `trainable_names(unet, "lora")` gives), so a lora
  version is stored, applied and chained exactly like the other sets;
- `text-proj`: an MMDiT's (SD3, FLUX) projections that see the text alone, a closed form's set there:
  `context_embedder` (the joint text tokens, joint_attention_dim wide, into the transformer's width) and
  the pooled `time_text_embed.text_embedder.linear_1`. The blocks' `add_k_proj`/`add_v_proj` read the text
  stream after the timestep's AdaLN modulation and, past the first block, after joint attention with the
  image tokens, so no text-only pairs exist there.
"""

from __future__ import annotations

import re

import torch

from unlearning.methods import PARAMETER_SETS  # noqa: F401 - re-exported: the sets are named there, torch-free

LORA_MODULES = r".*\.attn2\.(to_q|to_k|to_v|to_out\.0)"  # peft matches a str target with re.fullmatch
LORA_ADAPTER = "default"
TEXT_PROJECTIONS = ("context_embedder.weight", "time_text_embed.text_embedder.linear_1.weight")  # `text-proj`


def trainable_names(unet: torch.nn.Module, parameter_set: str) -> list[str]:
    """Names of the denoiser's (a UNet's, an MMDiT's for `text-proj`) parameters a set trains.

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
    elif parameter_set == "lora":  # the weights the adapters are merged into (biases are not adapted)
        chosen = [n for n in names if re.fullmatch(LORA_MODULES + r"\.weight", n)]
    elif parameter_set == "text-proj":  # the biases cancel from a closed form's pairs and stay
        chosen = [n for n in names if n in TEXT_PROJECTIONS]
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


def add_lora(unet: torch.nn.Module, *, rank: int, seed: int) -> dict[str, torch.nn.Parameter]:
    """Wrap the attn2 projections of `unet` in place with peft LoRA adapters and freeze everything
    else; returns the adapter parameters (the tensors that train, checkpoint and resume) by name.

    α = r, so the adapter's scale α/r is 1; peft initialises B = 0, so the student starts exactly at
    the parent. A's random init is drawn from `seed` without touching the global RNG (a run and its
    resumed run build the same adapters).
    """
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_MODULES, init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):  # peft initialises on the CPU, then moves to the base layer's device
        torch.manual_seed(seed)
        unet.add_adapter(config, adapter_name=LORA_ADAPTER)
    unet.requires_grad_(False)
    adapters = {name: param for name, param in unet.named_parameters() if ".lora_" in name}
    for param in adapters.values():
        param.requires_grad_(True)
    return adapters


def lora_merged_weights(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """W + (α/r)·B A of every adapted projection, differentiable in the adapters, keyed by the plain
    UNet's state-dict name (`...attn2.to_k.weight`) — what the weight will be once merged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        f"{name}.weight": module.get_base_layer().weight + module.get_delta_weight(LORA_ADAPTER)
        for name, module in unet.named_modules()
        if isinstance(module, BaseTunerLayer)
    }


@torch.no_grad()
def merge_lora(unet: torch.nn.Module) -> None:
    """Merge the adapters into their base weights and remove them: `unet` is a plain UNet again."""
    unet.fuse_lora()
    unet.unload_lora()
