"""The per-concept retain rule in two stages, as the sweep's leak (unlearning/evaluation/sweep.py).

The rule (`retain.per_concept.*.relative` in the shipped policies): for each retained concept, the candidate's
detection rate on the plan's images of it, relative to the base's on the same prompts and seeds, must not fall
below a bound calibrated from the base's own noise. At the gate's size a concept has 24 images (8 phrasings x 3
seeds), so the verdict can turn on one or two of them: the anchor square of a star request read 21/24 against
the base's 23/24 (x 0.913 < 0.934) and failed the gate, while on three fresh seed sets of the same prompts the
candidate equalled the base (pooled 90/96 against 92/96, x 0.978; bench/RESULTS.md, bench/retain_seeds.py).

1. **screen**: the plan's images of the concept, as `run_checks` judges them (unchanged);
2. **confirm**: a concept whose screen ratio is below the policy's bound for it is drawn again — each of its
   retain prompts on `PlanSize.retain_confirm_seeds` fresh seeds, the same seeds for both models and none a
   seed the plan uses — and its entry is recomputed over the screening and the fresh images pooled. The gate
   reads the pooled ratio, its n and its interval, against the same bound. A concept that passes the screen
   is not drawn again, and there is no second stage without a policy that bounds the concept.

Each entry keeps its stages: `screen` and `fresh` (the candidate's and the base's counts of n images, and their
ratio; `fresh` also its seeds per prompt), `screen_bound` (the bound screened against) and `decided_by`
("screen", or "pooled" where the fresh images count too).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from unlearning.evaluation import stats
from unlearning.evaluation.checks import retained_accuracy
from unlearning.evaluation.plan import EvaluationPlan, PromptCase, case_seed

# The fresh images use seed indices from here (after the plan's `seed_offset`): past any plan's seeds per prompt
# and apart from bench/calibrate.py's seed sets (multiples of 500 and 1000), as the leak's LEAK_OFFSET.
RETAIN_CONFIRM_OFFSET = 10_000

# One stage of one concept: (candidate hits, base hits, prompts), one entry per image, the same prompt and seed
# for both models (hits: 1 where the judge sees the concept; prompts: the bootstrap's clusters).
Stage = tuple[np.ndarray, np.ndarray, np.ndarray]


def stage_counts(stage: Stage) -> dict:
    """How many of a stage's n images show the concept, for the candidate and for the base, and their ratio."""
    candidate, base, _ = stage
    return {
        "candidate": int(np.sum(candidate)),
        "base": int(np.sum(base)),
        "n": int(len(candidate)),
        "relative": stats.ratio_of_means(candidate, base),
    }


def screen_fails(entry: dict, bound: float | None) -> bool:
    """Whether a concept's screen sends it to the second stage: its ratio is below `bound` (no bound: never;
    a ratio that is not a number, no images, has nothing to draw again)."""
    return bound is not None and entry["relative"] < bound


def stage_record(screen: Stage, fresh: Stage | None, *, bound: float | None) -> dict:
    """What each stage of a retained concept counted, the bound screened against and which decided."""
    empty = (np.zeros(0), np.zeros(0), np.zeros(0, dtype=str))
    return {
        "screen": stage_counts(screen),
        "fresh": stage_counts(fresh if fresh is not None else empty),
        "screen_bound": bound,
        "decided_by": "screen" if fresh is None else "pooled",
    }


def retain_stages(screen: Stage, fresh: Stage | None, *, bound: float | None) -> dict:
    """A retained concept's entry from its stages: run_checks' per-concept numbers and the stages' record.

    Without `fresh` the screen decides: the numbers are the screen's. With it, accuracy, counts, the ratio and
    their intervals are over the screening and the fresh images pooled (paired: the same prompt and seed for
    both models in each stage; a prompt's images of both stages are one cluster of the bootstrap), and the gate
    decides on those."""
    pooled = screen if fresh is None else tuple(np.concatenate([s, f]) for s, f in zip(screen, fresh))
    return {**retained_accuracy(*pooled), **stage_record(screen, fresh, bound=bound)}


def confirm_plan(plan: EvaluationPlan, concept: str, seeds_each: int) -> EvaluationPlan:
    """The second stage's cases of a retained concept: each of its retain prompts on `seeds_each` fresh seeds
    (indices from the plan's `seed_offset` + RETAIN_CONFIRM_OFFSET), as a plan of those cases only. A seed the
    plan already uses — or one already taken here — is skipped, so no fresh image repeats a plan's seed."""
    used = {case.seed for case in plan.cases}
    first: dict[str, PromptCase] = {}
    for case in plan.cases:
        if case.group.startswith("retain/") and case.concept == concept:
            first.setdefault(case.prompt, case)
    cases = []
    for prompt, case in first.items():
        index = plan.size.seed_offset + RETAIN_CONFIRM_OFFSET
        for _ in range(seeds_each):
            while (seed := case_seed(prompt, index)) in used:
                index += 1
            used.add(seed)
            cases.append(replace(case, seed=seed))
            index += 1
    return replace(plan, cases=tuple(cases))
