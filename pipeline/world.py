"""Which world judges a lineage (unlearning/world.py): chosen once, from the settings. Torch-free, so
the intake can check a concept without loading a model."""

from __future__ import annotations

from pipeline.settings import SHAPES_BASE_MODEL, LetheSettings
from unlearning.open_plan import LineageConcepts
from unlearning.world import OpenWorld, World


def world_for(settings: LetheSettings, concepts: LineageConcepts | None = None) -> World:
    """`settings.world`; auto: the shapes world for the shipped base, an open world (any text) for any other.

    An open world is judged by `settings.judge_model` (a CLIP) over `concepts`, the request's target,
    anchor, preserve and erased concepts, and the classes the operator lists (`judge_objects`,
    `judge_styles`): its judge must name them (unlearning/open_plan.py). Without
    them it can still take requests and build their prompts, not plan an evaluation of a target."""
    name = settings.world
    if name == "auto":
        name = "shapes" if str(settings.base_model) == SHAPES_BASE_MODEL else "open"
    if name == "shapes":
        from unlearning.shapes.world import ShapesWorld

        return ShapesWorld()
    return OpenWorld(
        settings.judge_model,
        styles=tuple(settings.judge_styles),
        objects=tuple(settings.judge_objects),
        nudity_concepts=tuple(settings.nudity_concepts),
        concepts=concepts or LineageConcepts(),
        device=settings.device,
    )
