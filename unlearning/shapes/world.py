"""The shapes world as a `World` (unlearning/world.py): its vocabulary, prompts, plans and two judges."""

from __future__ import annotations

from functools import cached_property

from unlearning.shapes.plan import shapes_plan
from unlearning.shapes.prompts import shapes_prompts
from unlearning.shapes.vocabulary import OBJECTS, STYLES, SYNONYMS, canonical

# Torch-free up to `judges()`: the intake asks a world what it knows without loading a model.


class ShapesWorld:
    name = "shapes"
    vocabulary: tuple[str, ...] = OBJECTS + STYLES

    def known(self, concept: str) -> bool:
        return canonical(concept) in self.vocabulary

    @staticmethod
    def describe_vocabulary() -> str:
        synonyms = ", ".join(f"{name} ({'/'.join(words)})" for name, words in SYNONYMS.items())
        return f"objects and styles of the shapes world: {synonyms}"

    def request_prompts(self, concept, *, synonyms=(), anchor=None, preserve=(), erased=(), per_concept=24):
        return shapes_prompts(
            concept, synonyms=synonyms, anchor=anchor, preserve=preserve, erased=erased, per_concept=per_concept
        )

    def plan(self, target, *, synonyms=(), erased=(), samples=6):
        return shapes_plan(target, synonyms=synonyms, erased=erased, samples=samples)

    @cached_property
    def _judges(self):
        from unlearning.shapes.judge import shapes_judges

        return shapes_judges()

    def judges(self):
        return self._judges
