"""What an evaluation looks at: an evaluation plan of (group, concept, prompt, seed) cases.

Groups (DESIGN.md, "Evaluation and gates"):
- `forget/gate`     the target named as requested, in the gate (training) templates;
- `forget/heldout`  the target in held-out templates (new phrasings);
- `forget/synonyms` the target named by its synonyms (requested ones and the vocabulary's);
- `rebound/<c>`     every concept erased earlier in the lineage;
- `retain/in/<c>`   every other concept of the target's domain (in-domain retain, IRA);
- `retain/cross/<c>` every concept of the other domain (cross-domain retain, CRA).

A world builds its plans (the shapes world: unlearning/shapes/plan.py); the checks only read them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptCase:
    group: str  # e.g. "forget/gate", "rebound/star", "retain/in/square"
    concept: str  # the concept this case measures (canonical name)
    domain: str  # the judge's head that judges it (shapes: "object" or "style")
    attributes: tuple[tuple[str, str], ...]  # (head, class) of every attribute the prompt names
    prompt: str
    seed: int


@dataclass(frozen=True)
class EvaluationPlan:
    target: str | None
    synonyms: tuple[str, ...]
    erased: tuple[str, ...]
    samples: int
    cases: tuple[PromptCase, ...]

    def groups(self) -> dict[str, list[int]]:
        """Indices of the cases of each group, in plan order."""
        grouped: dict[str, list[int]] = {}
        for index, case in enumerate(self.cases):
            grouped.setdefault(case.group, []).append(index)
        return grouped
