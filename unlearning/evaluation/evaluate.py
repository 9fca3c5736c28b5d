"""One evaluation: sample base and candidate on the plan (same prompts, same seeds), run every check,
apply the gate. The base's images come from the on-disk cache when they were generated before."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from unlearning.evaluation.cache import ImageCache, generate_cached
from unlearning.evaluation.checks import Judge, run_checks
from unlearning.evaluation.gates import Decision, Policy, decide
from unlearning.evaluation.plan import EvaluationPlan
from unlearning.sampling import generate


@dataclass
class Evaluation:
    plan: EvaluationPlan
    results: dict
    decision: Decision | None
    candidate_images: np.ndarray
    base_images: np.ndarray
    timings: dict


def evaluate(
    candidate_pipe,
    base_pipe,
    judges: tuple[Judge, ...],
    plan: EvaluationPlan,
    *,
    sampler: dict,
    base_sha256: str,
    cache: ImageCache | None,
    policy: Policy | None = None,
    drift_value: float | None = None,
    lpips_distance=None,
    clip_scorer=None,
) -> Evaluation:
    """Evaluate `candidate_pipe` against `base_pipe` on `plan`.

    `judges[0]` judges; a second judge's agreement with it is reported (unlearning/evaluation/checks.py).
    When the candidate *is* the base (same object), its images are the base's: a model compared with
    itself must give distance 0 and FID 0, and costs one sampling pass.
    """
    # Two sets may share an image (a ring with a dotted pattern retains both): sample each pair once.
    pairs = list(dict.fromkeys((c.prompt, c.seed) for c in plan.cases))
    where = {pair: i for i, pair in enumerate(pairs)}
    rows = np.array([where[(c.prompt, c.seed)] for c in plan.cases])
    prompts, seeds = [p for p, _ in pairs], [s for _, s in pairs]
    started = time.perf_counter()
    base_images, generated = generate_cached(
        base_pipe, prompts, seeds, model_sha256=base_sha256, sampler=sampler, cache=cache
    )
    base_seconds = time.perf_counter() - started
    if candidate_pipe is base_pipe:
        candidate_images = base_images
    else:
        candidate_images = generate(
            candidate_pipe, prompts, seeds, steps=sampler["steps"], guidance_scale=sampler["guidance_scale"]
        )
    base_images, candidate_images = base_images[rows], candidate_images[rows]
    sample_seconds = time.perf_counter() - started - base_seconds
    results = run_checks(
        plan,
        tuple(judges),
        candidate_images,
        base_images,
        drift_value=drift_value,
        lpips_distance=lpips_distance,
        clip_scorer=clip_scorer,
    )
    decision = decide(results, policy) if policy is not None else None
    timings = {
        "base_seconds": round(base_seconds, 2),
        "base_images_generated": generated,
        "base_images_cached": len(prompts) - generated,
        "candidate_seconds": round(sample_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "images": len(plan.cases),
        "unique_images": len(prompts),
    }
    return Evaluation(plan, results, decision, candidate_images, base_images, timings)
