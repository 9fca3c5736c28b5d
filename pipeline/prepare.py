"""Prepare: the parent model a request starts from and the request's training data.

The parent is the production version the request was claimed against (the base when there is none),
loaded and verified through registry.loading.load_parent. The training data are the parent's images
of the request's anchor, preserve and replay prompts (the one training loop's `prepare_data`), cached
on disk by (parent sha256, prompt, seed, sampler): `unlearn` finds them there, and a resumed request
never samples them again.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.settings import LetheSettings
from pipeline.values import Parent
from pipeline.world import world_for
from registry.loading import LoadedModel, load_parent
from unlearning.data import prepare_data
from unlearning.loop import UnlearnConfig
from unlearning.prompts import RequestPrompts


def unlearn_config(settings: LetheSettings, request, parent: Parent) -> UnlearnConfig:
    """The request's config: its own fields and options, the lineage's erased concepts, the operator's
    training settings (`unlearn_steps`, `checkpoint_every`; None leaves the method's defaults)."""
    return UnlearnConfig.from_request(
        request, erased=parent.erased, steps=settings.unlearn_steps, checkpoint_every=settings.checkpoint_every
    )


def request_prompts(settings: LetheSettings, config: UnlearnConfig) -> RequestPrompts:
    """The prompt sets of the request, from the lineage's world."""
    return world_for(settings).request_prompts(config)


def load_parent_model(settings: LetheSettings, source: str, *, extra_deltas: tuple[Path, ...] = ()) -> LoadedModel:
    """A model named by `source` (the base, an `lethe unlearn` folder, models:/...), verified against the
    base its deltas record, with `extra_deltas` applied on top (a candidate: its parent plus its delta)."""
    with tempfile.TemporaryDirectory(prefix="lethe-parent-") as tmp:
        return load_parent(
            source, tracking_uri=settings.mlflow_tracking_uri, workdir=Path(tmp), extra_deltas=extra_deltas
        )


def prepare(settings: LetheSettings, request, parent: Parent, *, progress: bool = False) -> dict:
    """Sample and cache the parent's training images for the request; returns what was prepared."""
    config = unlearn_config(settings, request, parent)
    config.validate()
    prompts = request_prompts(settings, config)
    loaded = load_parent_model(settings, parent.source(settings.model_name, settings.base_model))
    prepare_data(
        loaded.pipe,
        config,
        prompts,
        model_sha=loaded.identity,
        cache_dir=settings.home / "cache" / "latents",
        progress=progress,
    )
    return {
        "parent_sha256": loaded.identity,
        "target_prompts": len(prompts.target),
        "preserve_prompts": len(prompts.preserve),
        "replay_prompts": len(prompts.replay),
    }
