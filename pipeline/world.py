"""Which world judges a lineage (unlearning/world.py): chosen once, from the settings. Torch-free, so
the intake can check a concept without loading a model."""

from __future__ import annotations

from pipeline.settings import SHAPES_BASE_MODEL, LetheSettings
from unlearning.world import OpenWorld, World


def world_for(settings: LetheSettings) -> World:
    """`settings.world`; auto: the shapes world for the shipped base, an open world (any text, no judge)
    for any other."""
    name = settings.world
    if name == "auto":
        name = "shapes" if str(settings.base_model) == SHAPES_BASE_MODEL else "open"
    if name == "shapes":
        from unlearning.shapes.world import ShapesWorld

        return ShapesWorld()
    return OpenWorld()
