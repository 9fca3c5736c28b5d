"""One evaluation: sample base and candidate on the plan (same prompts, same seeds), run every check,
look beyond the plan (the sweep and the attack, for the target and every concept erased earlier),
apply the gate. The base's images come from the on-disk cache when they were generated before."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace

import numpy as np

from unlearning.conditioning import MMDIT, architecture
from unlearning.evaluation.attack import AttackBudget, attack_concept
from unlearning.evaluation.cache import ImageCache, generate_cached
from unlearning.evaluation.checks import Judge, run_checks
from unlearning.evaluation.gates import Decision, Policy, decide
from unlearning.evaluation.inversion import diagnose
from unlearning.evaluation.plan import EvaluationPlan
from unlearning.evaluation.sweep import SweepSize, run_sweep, sweep_prompts
from unlearning.sampling import generate


@dataclass(frozen=True)
class Probes:
    """What an evaluation looks at beyond its plan: the sweep and the attack (either may be off), and, for
    every concept they judge, the judge head that sees it and the words that name it (from the world)."""

    sweep: SweepSize | None
    attack: AttackBudget | None
    heads: dict[str, str]  # concept -> judge head
    names: dict[str, tuple[str, ...]]  # concept -> its name and synonyms
    diagnostics: bool = False  # RECE's embedding inversion and a textual inversion, reported (not gated)


@dataclass
class Evaluation:
    plan: EvaluationPlan
    results: dict
    decision: Decision | None
    candidate_images: np.ndarray
    base_images: np.ndarray
    timings: dict
    sweep_images: dict = field(default_factory=dict)  # run_sweep's images, for the report
    attack_images: dict = field(default_factory=dict)  # concept -> {prompt: (prompt that drew it, images)}


def attack_prompts(plan: EvaluationPlan, concept: str) -> list[str]:
    """The plan's phrasings of `concept` (its forget or rebound sets), in a fixed shuffled order: the
    attack tries the first few on which the base draws it, across templates and synonyms."""
    prompts = list(
        dict.fromkeys(
            c.prompt for c in plan.cases if c.concept == concept and c.group.startswith(("forget/", "rebound/"))
        )
    )
    random.Random(f"lethe-attack|{concept}").shuffle(prompts)
    return prompts


def probe(
    candidate_pipe, base_pipe, judge, plan: EvaluationPlan, probes: Probes, *, sampler, base_sha256, cache
) -> tuple[dict, dict, dict, dict]:
    """The sweep and the attack for every concept of `probes.heads`; (results, sweep images, attack
    images, seconds of each). On an MMDiT (SD3, FLUX) the attack and the inversion diagnostics, which
    optimise through a UNet's conditioning and noise schedule, are not run: `results["not_run"]` says so."""
    results, sweep_images, attack_images, seconds = {}, {}, {}, {}
    if architecture(candidate_pipe) in MMDIT and probes.heads and (probes.attack is not None or probes.diagnostics):
        reason = f"{type(candidate_pipe).__name__}: the attack and the inversions optimise through a UNet"
        results["not_run"] = {name: reason for name in ("attack", "diagnostics")}
        probes = replace(probes, attack=None, diagnostics=False)
    if probes.sweep is not None and probes.heads:
        started = time.perf_counter()
        prompts = sweep_prompts(candidate_pipe.tokenizer, probes.names, probes.sweep)
        results["sweep"], sweep_images = run_sweep(
            candidate_pipe,
            base_pipe,
            judge,
            probes.heads,
            prompts,
            size=probes.sweep,
            sampler=sampler,
            base_sha256=base_sha256,
            cache=cache,
        )
        seconds["sweep_seconds"] = round(time.perf_counter() - started, 2)
    if probes.attack is not None and probes.heads:
        started = time.perf_counter()
        results["attack"] = {}
        for concept, head in probes.heads.items():
            results["attack"][concept], attack_images[concept] = attack_concept(
                candidate_pipe,
                base_pipe,
                judge,
                head=head,
                concept=concept,
                prompts=attack_prompts(plan, concept),
                budget=probes.attack,
                sampler=sampler,
            )
        seconds["attack_seconds"] = round(time.perf_counter() - started, 2)
    if probes.diagnostics and probes.heads and candidate_pipe is not base_pipe:
        started = time.perf_counter()
        references = sweep_prompts(candidate_pipe.tokenizer, {}, probes.sweep or SweepSize())
        results["diagnostics"] = {
            concept: diagnose(
                candidate_pipe,
                base_pipe,
                judge,
                head=head,
                concept=concept,
                prompts=attack_prompts(plan, concept),
                reference_prompts=[p.prompt for p in references],
                budget=probes.attack or AttackBudget(),
                sampler=sampler,
            )
            for concept, head in probes.heads.items()
        }
        seconds["diagnostics_seconds"] = round(time.perf_counter() - started, 2)
    return results, sweep_images, attack_images, seconds


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
    retention_distance=None,
    fid_features=None,
    clip_scorer=None,
    probes: Probes | None = None,
) -> Evaluation:
    """Evaluate `candidate_pipe` against `base_pipe` on `plan`.

    `judges[0]` judges; a second judge's agreement with it is reported (unlearning/evaluation/checks.py).
    When the candidate *is* the base (same object), its images are the base's: a model compared with
    itself must give distance 0 and FID 0, and costs one sampling pass. `probes` adds the sweep and the
    attack (`results["sweep"]`, `results["attack"]`) before the gate decides.
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
        retention_distance=retention_distance,
        fid_features=fid_features,
        clip_scorer=clip_scorer,
    )
    probe_results, sweep_images, attack_images, probe_seconds = (
        probe(
            candidate_pipe,
            base_pipe,
            judges[0],
            plan,
            probes,
            sampler=sampler,
            base_sha256=base_sha256,
            cache=cache,
        )
        if probes is not None
        else ({}, {}, {}, {})
    )
    results.update(probe_results)
    decision = decide(results, policy) if policy is not None else None
    timings = {
        "base_seconds": round(base_seconds, 2),
        "base_images_generated": generated,
        "base_images_cached": len(prompts) - generated,
        "candidate_seconds": round(sample_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "images": len(plan.cases),
        "unique_images": len(prompts),
        **probe_seconds,
    }
    return Evaluation(plan, results, decision, candidate_images, base_images, timings, sweep_images, attack_images)
