"""Model deltas: what one unlearning step changed, stored as "trained tensors minus base".

A delta holds, for every tensor the step trained, θ_trained − θ_0 (θ_0 = the *base* model, not the
parent), keyed by "<component>.<state-dict key>" (e.g. "unet.down_blocks.1...attn2.to_k.weight"; on an MMDiT,
SD3 or FLUX, the denoiser is the pipeline's `transformer`: "transformer.context_embedder.weight").
Since a step starts from its parent, θ_trained already contains the parent's changes to the tensors it
trains; tensors it does not train keep the parent's values. So a version's weights are the base with
the deltas of its lineage applied oldest first, each overwriting what it covers:
θ_v[k] = θ_0[k] + Δ_j[k] for the newest delta j on the chain that covers k.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

DELTA_FORMAT = "lethe-delta/1"
DENOISERS = ("unet", "transformer")  # the pipeline component that denoises: a UNet, or an MMDiT (SD3, FLUX)
COMPONENTS = (*DENOISERS, "text_encoder")


def denoiser_component(pipe) -> str:
    """The name of the pipeline's denoiser component, `unet` or `transformer` (the one place that says which):
    what a delta's keys are prefixed with and what an unlearning step edits.

    Raises:
        ValueError: the pipeline has neither.
    """
    for name in DENOISERS:
        if getattr(pipe, name, None) is not None:
            return name
    raise ValueError(f"{type(pipe).__name__} has no denoiser ({' or '.join(DENOISERS)})")


def denoiser(pipe) -> torch.nn.Module:
    """The pipeline's UNet or MMDiT transformer (`denoiser_component`)."""
    return getattr(pipe, denoiser_component(pipe))


def compute_delta(
    trained: dict[str, torch.Tensor], base: dict[str, torch.Tensor], component: str = "unet"
) -> dict[str, torch.Tensor]:
    """θ_trained − θ_0 for the given (trained) tensors, in fp32, keys prefixed with the component.

    Raises:
        KeyError: a trained tensor has no counterpart in the base.
        ValueError: shapes differ.
    """
    delta = {}
    for key, value in trained.items():
        if key not in base:
            raise KeyError(f"{component}.{key} is not in the base model")
        if value.shape != base[key].shape:
            raise ValueError(f"{component}.{key}: shape {tuple(value.shape)} != base {tuple(base[key].shape)}")
        delta[f"{component}.{key}"] = (value.detach().float().cpu() - base[key].detach().float().cpu()).contiguous()
    return delta


def save_delta(path: str | Path, delta: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write a delta as safetensors; metadata (JSON-able values) goes into the header as strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": DELTA_FORMAT, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(delta, tmp, metadata=header)
    tmp.replace(path)
    return path


def load_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a delta and its header metadata.

    Raises:
        ValueError: the file is not a Lethe delta.
    """
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != DELTA_FORMAT:
        raise ValueError(f"{path}: not a Lethe delta (format {metadata.get('format')!r})")
    return load_file(str(path)), metadata


def delta_norm_ratio(delta: dict[str, torch.Tensor], base_modules: dict[str, torch.nn.Module]) -> float:
    """‖θ − θ_0‖ / ‖θ_0‖ over the tensors a delta covers (the drift of docs/design.md's evaluation)."""
    changed, reference = 0.0, 0.0
    for key, value in delta.items():
        component, name = key.split(".", 1)
        base_value = base_modules[component].state_dict()[name].float()
        changed += float(value.float().pow(2).sum())
        reference += float(base_value.pow(2).sum())
    return (changed / reference) ** 0.5 if reference else 0.0


@torch.no_grad()
def apply_delta_files(pipe, paths: list[str | Path]) -> set[str]:
    """Apply delta files (oldest first) to a pipeline loaded as the base; returns the keys changed.

    Only the tensors the deltas cover are copied as the base state, so this costs memory in
    proportion to the deltas, not to the model.
    """
    deltas = [load_delta(path)[0] for path in paths]
    modules = {denoiser_component(pipe): denoiser(pipe), "text_encoder": pipe.text_encoder}
    base_state: dict[str, dict[str, torch.Tensor]] = {name: {} for name in modules}
    for key in {key for delta in deltas for key in delta}:
        component, name = key.split(".", 1)
        if component in modules:
            state = modules[component].state_dict()
            if name in state:
                base_state[component][name] = state[name].clone()
    return apply_deltas(modules, base_state, deltas)


@torch.no_grad()
def apply_deltas(
    modules: dict[str, torch.nn.Module],
    base_state: dict[str, dict[str, torch.Tensor]],
    deltas: list[dict[str, torch.Tensor]],
) -> set[str]:
    """Set modules to base + deltas (oldest first; later deltas overwrite). Returns the keys changed.

    `base_state` holds the base tensors of every covered key ({component: state_dict}); keeping it
    separate from the live modules makes applying a chain idempotent.

    Raises:
        KeyError: a delta names a component or tensor the model does not have.
    """
    newest: dict[str, torch.Tensor] = {}
    for delta in deltas:
        newest.update(delta)
    for key, value in newest.items():
        component, name = key.split(".", 1)
        if component not in modules:
            raise KeyError(f"delta tensor {key}: the model has no component {component!r}")
        params = dict(modules[component].named_parameters())
        if name not in params:
            raise KeyError(f"delta tensor {key}: {component} has no parameter {name!r}")
        target = params[name]
        target.copy_((base_state[component][name].float() + value.float()).to(target.dtype))
    return set(newest)
