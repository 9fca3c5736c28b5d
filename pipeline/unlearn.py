"""Unlearn: one decremental step with the one training loop (unlearning/loop.py).

The parent is loaded, the request's config and prompts are built, the loop trains (or a closed-form
method edits) and writes `delta.safetensors` and `summary.json` under `out_dir`. A step that finished
before under the same config is not trained again (a request resumed after a crash during evaluation
goes straight on); one stopped part-way resumes from its checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.prepare import load_parent_model, request_prompts, unlearn_config
from pipeline.settings import LetheSettings
from pipeline.values import Parent
from registry.loading import LoadedModel
from unlearning.loop import LINEAGE_FILE, UnlearnConfig, run_unlearning
from unlearning.sampling import load_model


def train_step(
    settings: LetheSettings,
    config: UnlearnConfig,
    loaded: LoadedModel,
    out_dir: Path,
    *,
    progress: bool = True,
    metadata: dict | None = None,
) -> dict:
    """Run the loop on a loaded parent (its pipeline is modified in place: afterwards it is the
    candidate). Returns the loop's summary."""
    base = load_model(loaded.base_model)
    base_values = {k: v.clone() for k, v in base.unet.state_dict().items()}
    metadata = {"base_model": loaded.base_model, "base_sha256": loaded.base_sha256, **(metadata or {})}
    return run_unlearning(
        loaded.pipe,
        config,
        out_dir,
        prompts=request_prompts(settings, config),
        model_sha=loaded.identity,
        base_values=base_values,
        cache_dir=settings.home / "cache" / "latents",
        metadata=metadata,
        progress=progress,
        lineage=loaded.lineage,
    )


def keep_ancestors(loaded: LoadedModel, out_dir: Path) -> None:
    """Copy the parent's deltas (and lineage terms) beside the new one, so `out_dir` is a model by itself."""
    if loaded.ancestors:
        (out_dir / "parents").mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(loaded.ancestors):
            shutil.copyfile(path, out_dir / "parents" / f"{index:03d}-delta.safetensors")
    if loaded.lineage is not None:
        from safetensors.torch import save_file

        (out_dir / "parents").mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in loaded.lineage.items()}, out_dir / "parents" / LINEAGE_FILE)


def unlearn(settings: LetheSettings, request, parent: Parent, out_dir: Path, *, progress: bool = False) -> dict:
    """The request's step, from the production version it was claimed against; returns the summary."""
    config = unlearn_config(settings, request, parent)
    loaded = load_parent_model(settings, parent.source(settings.model_name, settings.base_model))
    return train_step(settings, config, loaded, out_dir, progress=progress, metadata={"request_id": request.id})
