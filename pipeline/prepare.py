"""Prepare: what a request's step is built from — its config, its prompts, and the parent model.

The parent is the production version the request was claimed against (the base when there is none),
loaded and verified through registry.loading.load_parent. A loss method's training data (the parent's
images of the anchor, preserve and replay prompts) are sampled by the loop itself and cached on disk
by (parent sha256, prompt, seed, sampler) (unlearning/data.py `prepare_data`): a resumed request never
samples them again, and the default closed form needs none.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.settings import LetheSettings
from pipeline.values import Parent
from registry.loading import LoadedModel, load_parent
from unlearning.loop import UnlearnConfig


def unlearn_config(settings: LetheSettings, request, parent: Parent) -> UnlearnConfig:
    """The request's config: its own fields and options, the lineage's erased concepts, the operator's
    training settings (`unlearn_steps`, `unlearn_data_steps`, `checkpoint_every`; None leaves the defaults)."""
    return UnlearnConfig.from_request(
        request,
        erased=parent.erased,
        steps=settings.unlearn_steps,
        data_steps=settings.unlearn_data_steps,
        checkpoint_every=settings.checkpoint_every,
    )


def load_parent_model(settings: LetheSettings, source: str, *, extra_deltas: tuple[Path, ...] = ()) -> LoadedModel:
    """A model named by `source` (the base, an `lethe unlearn` folder, models:/...), verified against the
    base its deltas record, with `extra_deltas` applied on top (a candidate: its parent plus its delta)."""
    with tempfile.TemporaryDirectory(prefix="lethe-parent-") as tmp:
        return load_parent(
            source, tracking_uri=settings.mlflow_tracking_uri, workdir=Path(tmp), extra_deltas=extra_deltas
        )
