"""A world: what the generic core needs to know about a base model's concepts (docs/design.md, "The shapes
world"). The pipeline picks one for the lineage's base and hands it to the steps; nothing in the
generic core (the loop, the checks, the gates) imports a particular world.

- `known(concept)`: can this world judge the concept? An open world takes any text.
- `request_prompts(...)`: the prompt sets of one unlearning request (unlearning/prompts.py).
- `plan(...)`: the evaluation plan of a candidate (unlearning/evaluation/plan.py).
- `judges()`: the judges that look at the plan's images (first: the one gates and distances use).
- `head_of(concept)` / `names_of(concept)`: the judge head that sees a concept, and the words that name
  it (its name and synonyms) — what the sweep and the attack (unlearning/evaluation/sweep.py, attack.py)
  need to look for a concept beyond the plan's phrasings.

The shapes world (unlearning/shapes/world.py) knows its vocabulary and has two judges; `OpenWorld`, for
any other base, takes any text and has no judge, so its candidates cannot be gated until one is
configured (`NoJudge`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from unlearning.evaluation.plan import EvaluationPlan, PlanSize
from unlearning.prompts import RequestPrompts, open_prompts

if TYPE_CHECKING:  # the judges need torch; knowing a world's vocabulary does not
    from unlearning.evaluation.checks import Judge


class NoJudge(Exception):
    """This world has no judge for the concept: a candidate cannot be evaluated (nor gated)."""


class World(Protocol):
    name: str
    vocabulary: tuple[str, ...]  # the concepts it can judge; () for an open world

    def known(self, concept: str) -> bool: ...

    def request_prompts(self, config) -> RequestPrompts:
        """The prompt sets of one request: `config` names the concept, synonyms, anchor, preserve and erased
        concepts, `prompts_per_concept`, `preserve_per_concept` and `prompt_templates` (an UnlearnConfig)."""
        ...

    def plan(
        self, target: str | None, *, synonyms: tuple[str, ...], erased: tuple[str, ...], size: PlanSize
    ) -> EvaluationPlan: ...

    def judges(self) -> tuple[Judge, ...]: ...

    def head_of(self, concept: str) -> str: ...

    def names_of(self, concept: str) -> tuple[str, ...]: ...


class OpenWorld:
    """Any base model: any concept text, generic prompt templates, no judge."""

    name = "open"
    vocabulary: tuple[str, ...] = ()

    def known(self, concept: str) -> bool:
        return True

    def request_prompts(self, config) -> RequestPrompts:
        return open_prompts(
            config.concept,
            synonyms=config.synonyms,
            anchor=config.anchor,
            preserve=config.preserve,
            erased=config.erased,
            per_concept=config.prompts_per_concept,
        )

    def plan(self, target, *, synonyms=(), erased=(), size=PlanSize()) -> EvaluationPlan:
        raise NoJudge("this base model has no judge configured: its candidates cannot be evaluated or gated")

    def judges(self) -> tuple[Judge, ...]:
        raise NoJudge("this base model has no judge configured")

    def head_of(self, concept: str) -> str:
        raise NoJudge("this base model has no judge configured")

    def names_of(self, concept: str) -> tuple[str, ...]:
        return (concept,)
