"""The shapes world as a `World` (unlearning/world.py): its vocabulary, prompts, plans and two judges."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from unlearning.evaluation.plan import PlanSize
from unlearning.shapes.plan import shapes_plan
from unlearning.shapes.prompts import shapes_prompts
from unlearning.shapes.vocabulary import OBJECTS, STYLES, SYNONYMS, canonical, domain_of

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

    def request_prompts(self, config):
        return shapes_prompts(
            config.concept,
            synonyms=config.synonyms,
            anchor=config.anchor,
            preserve=config.preserve,
            erased=config.erased,
            per_concept=config.prompts_per_concept,
            preserve_per_concept=config.preserve_per_concept,
            templates=config.prompt_templates,
        )

    def plan(self, target, *, synonyms=(), erased=(), size=PlanSize()):
        return shapes_plan(target, synonyms=synonyms, erased=erased, size=size)

    def head_of(self, concept: str) -> str:
        return domain_of(concept)

    def names_of(self, concept: str) -> tuple[str, ...]:
        name = canonical(concept)
        return (name, *SYNONYMS.get(name, ()))

    def known_attacks(self, concept: str) -> tuple[str, ...]:
        """Typed prompts an attack found bringing `concept` back on an edit of this base (known_attacks.json:
        each with where it was found), tried on every candidate (pipeline/attacks.py)."""
        shipped = json.loads((Path(__file__).parent / "known_attacks.json").read_text())
        return tuple(entry["prompt"] for entry in shipped.get(canonical(concept), []))

    @cached_property
    def _judges(self):
        from unlearning.shapes.judge import shapes_judges

        return shapes_judges()

    def judges(self):
        return self._judges
