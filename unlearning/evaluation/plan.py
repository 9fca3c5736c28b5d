"""What an evaluation looks at: an evaluation plan of (group, concept, prompt, seed) cases.

Groups (docs/design.md, "Evaluation and gates"):
- `forget/gate`     the target named as requested, in the gate (training) templates;
- `forget/heldout`  the target in held-out templates (new phrasings);
- `forget/synonyms` the target named by its synonyms (requested ones and the vocabulary's);
- `rebound/<c>`     every concept erased earlier in the lineage;
- `retain/in/<c>`   every other concept of the target's domain (in-domain retain, IRA);
- `retain/cross/<c>` every concept of the other domain (cross-domain retain, CRA).

Every set is a number of phrasings (distinct prompts) times a few seeds each, so that a rate rests on
enough images to decide (a one-sided test of "UA > 0.85" needs about 60: unlearning/evaluation/stats.py)
and an interval can resample whole prompts. A world builds its plans (the shapes world:
unlearning/shapes/plan.py); the checks only read them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PLAN_SEED = 700_000_000  # evaluation seeds live far from training seeds


class PlanError(ValueError):
    """An evaluation that cannot be planned: an unknown concept, a target also erased, no images."""


def case_seed(prompt: str, index: int) -> int:
    """The seed of image `index` of a prompt: the same in every plan that asks for this prompt (so the base
    model's images come from the cache)."""
    return PLAN_SEED + int(hashlib.sha256(f"{prompt}|{index}".encode()).hexdigest()[:8], 16) % 100_000_000


@dataclass(frozen=True)
class PlanSize:
    """How many images each kind of set holds (each a number of phrasings x `seeds_per_prompt`)."""

    # per forget set (gate, held-out, synonyms) and per rebound set: 32 phrasings x 3 seeds, so that a concept
    # the base draws only two times in three (striped) still gives n >= 60 where the base draws it
    forget_images: int = 96
    retain_images: int = 24  # per retained concept: 8 phrasings x 3 seeds
    # at least this many per judge head (objects, styles): when a lineage has erased most of a head's
    # concepts, each remaining one gets more images, so the head's check keeps the n it was calibrated at
    retain_head_images: int = 144
    seeds_per_prompt: int = 3
    seed_offset: int = 0  # other seeds for the same prompts (the noise floor: the base against itself)
    # The per-concept retain rule's second stage (unlearning/evaluation/retain_confirm.py): a retained concept
    # whose ratio fails its bound on these images is drawn again, each of its prompts on this many fresh seeds
    # per model, and decided on both stages pooled (9: three times its images at 3 seeds a prompt); 0: none
    retain_confirm_seeds: int = 9

    def phrasings(self, images: int) -> tuple[int, int]:
        """(phrasings, seeds each) for a set of about `images` images (at least one of each)."""
        seeds = max(1, min(self.seeds_per_prompt, images))
        return max(1, -(-images // seeds)), seeds

    @classmethod
    def quick(cls, images: int) -> PlanSize:
        """Every set `images` images (a quick look; a gate refuses to decide on too few)."""
        return cls(forget_images=images, retain_images=images, retain_head_images=0)

    def per_retained_concept(self, concepts_in_head: int) -> int:
        """Images per retained concept of a head that keeps `concepts_in_head` concepts: `retain_images`,
        or more (whole seed sets) so that the head holds at least `retain_head_images`."""
        needed = -(-self.retain_head_images // max(1, concepts_in_head))
        seeds = max(1, self.seeds_per_prompt)
        return max(self.retain_images, -(-needed // seeds) * seeds)


@dataclass(frozen=True)
class PromptCase:
    group: str  # e.g. "forget/gate", "rebound/star", "retain/in/square"
    concept: str  # the concept this case measures (canonical name)
    domain: str  # the judge's head that judges it (shapes: "object" or "style")
    attributes: tuple[tuple[str, str], ...]  # (head, class) of every attribute the prompt names
    prompt: str  # also the cluster of the bootstrap: images of one prompt are correlated
    seed: int


@dataclass(frozen=True)
class EvaluationPlan:
    target: str | None
    synonyms: tuple[str, ...]
    erased: tuple[str, ...]
    size: PlanSize
    cases: tuple[PromptCase, ...]

    def groups(self) -> dict[str, list[int]]:
        """Indices of the cases of each group, in plan order."""
        grouped: dict[str, list[int]] = {}
        for index, case in enumerate(self.cases):
            grouped.setdefault(case.group, []).append(index)
        return grouped
