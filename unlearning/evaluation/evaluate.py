"""One evaluation: sample base and candidate on the plan (same prompts, same seeds), run every check,
draw again, on fresh seeds, each retained concept whose ratio fails the gate's bound on the plan's images
(unlearning/evaluation/retain_confirm.py), look beyond the plan (the sweep and the attack, for the target
and every concept erased earlier), apply the gate. The base's images come from the on-disk cache when they
were generated before."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np

from unlearning.evaluation.attack import AttackBudget, attack_concept
from unlearning.evaluation.cache import ImageCache, generate_cached
from unlearning.evaluation.checks import Judge, hits, run_checks
from unlearning.evaluation.gates import Decision, Policy, decide, lower_bound
from unlearning.evaluation.inversion import diagnose
from unlearning.evaluation.plan import EvaluationPlan
from unlearning.evaluation.retain_confirm import confirm_plan, retain_stages, screen_fails, stage_record
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
    known_attacks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # concept -> prompts found before
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
    # retained concept drawn again -> {"prompts", "base", "candidate"}: its fresh images (retain_confirm.py)
    retain_confirm_images: dict = field(default_factory=dict)


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


def confirm_retained(
    candidate_pipe,
    base_pipe,
    judge: Judge,
    plan: EvaluationPlan,
    results: dict,
    screen_hits: tuple[np.ndarray, np.ndarray],
    policy: Policy | None,
    *,
    sampler: dict,
    base_sha256: str,
    cache: ImageCache | None,
) -> dict:
    """The per-concept retain rule's second stage (unlearning/evaluation/retain_confirm.py), in place in
    `results["retain"]`: each retained concept whose ratio on the plan's images (`screen_hits`: the candidate's
    and the base's hits per case) is below the policy's bound for it is drawn again on
    `plan.size.retain_confirm_seeds` fresh seeds a prompt, both models, and decided on both stages pooled; every
    other concept keeps its screen. Returns the fresh images of each concept drawn again (for the report)."""
    per_concept, groups = results["retain"]["per_concept"], plan.groups()
    prompts = np.array([c.prompt for c in plan.cases])
    images = {}
    for concept, entry in per_concept.items():
        idx = np.array(groups[f"retain/{entry['kind']}/{concept}"], dtype=int)
        screen = (screen_hits[0][idx], screen_hits[1][idx], prompts[idx])
        bound = lower_bound(policy, f"retain.per_concept.{concept}.relative") if policy is not None else None
        if not (plan.size.retain_confirm_seeds and screen_fails(entry, bound)):
            entry.update(stage_record(screen, None, bound=bound))  # its numbers are run_checks', the screen's
            continue
        fresh_plan = confirm_plan(plan, concept, plan.size.retain_confirm_seeds)
        texts, seeds = [c.prompt for c in fresh_plan.cases], [c.seed for c in fresh_plan.cases]
        base_images, _ = generate_cached(
            base_pipe, texts, seeds, model_sha256=base_sha256, sampler=sampler, cache=cache
        )
        candidate_images = (
            base_images
            if candidate_pipe is base_pipe
            else generate(
                candidate_pipe, texts, seeds, steps=sampler["steps"], guidance_scale=sampler["guidance_scale"]
            )
        )
        fresh = (
            hits(fresh_plan, judge.probabilities(candidate_images), judge.heads),
            hits(fresh_plan, judge.probabilities(base_images), judge.heads),
            np.array(texts),
        )
        entry.update(retain_stages(screen, fresh, bound=bound))
        entry["fresh"]["seeds"] = plan.size.retain_confirm_seeds
        images[concept] = {"prompts": texts, "base": base_images, "candidate": candidate_images}
    relatives = [v["relative"] for v in per_concept.values() if not np.isnan(v["relative"])]
    results["retain"]["min_concept_relative"] = min(relatives) if relatives else float("nan")
    return images


def probe(
    candidate_pipe, base_pipe, judge, plan: EvaluationPlan, probes: Probes, *, sampler, base_sha256, cache
) -> tuple[dict, dict, dict, dict]:
    """The sweep, the attack and (where `probes.diagnostics`) the inversion diagnostics for every concept of
    `probes.heads`; (results, sweep images, attack images, seconds of each). All run on every architecture: on an
    MMDiT (SD3, FLUX) the attack and the textual inversion learn through its flow-matching loss
    (unlearning/evaluation/attack.py, flow.py), and RECE's inversion solves over its `text-proj` maps
    (`context_embedder` and the pooled projection) in place of a UNet's attn2 K/V (inversion.py)."""
    results, sweep_images, attack_images, seconds = {}, {}, {}, {}
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
                known=probes.known_attacks.get(concept, ()),
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
    itself must give distance 0 and FID 0, and costs one sampling pass. Under a `policy`, each retained
    concept whose ratio fails its bound is drawn again on fresh seeds and decided on both stages pooled
    (`confirm_retained`). `probes` adds the sweep and the attack (`results["sweep"]`, `results["attack"]`)
    before the gate decides.
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
    judge = judges[0]
    probabilities = (judge.probabilities(candidate_images), judge.probabilities(base_images))
    results = run_checks(
        plan,
        tuple(judges),
        candidate_images,
        base_images,
        drift_value=drift_value,
        retention_distance=retention_distance,
        fid_features=fid_features,
        clip_scorer=clip_scorer,
        probabilities=probabilities,
    )
    confirm_started = time.perf_counter()
    retain_confirm_images = confirm_retained(
        candidate_pipe,
        base_pipe,
        judge,
        plan,
        results,
        (hits(plan, probabilities[0], judge.heads), hits(plan, probabilities[1], judge.heads)),
        policy,
        sampler=sampler,
        base_sha256=base_sha256,
        cache=cache,
    )
    confirm_seconds = time.perf_counter() - confirm_started
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
        "retain_confirm_seconds": round(confirm_seconds, 2),
        "retain_confirm_images": sum(len(v["prompts"]) for v in retain_confirm_images.values()),
        **probe_seconds,
    }
    return Evaluation(
        plan,
        results,
        decision,
        candidate_images,
        base_images,
        timings,
        sweep_images,
        attack_images,
        retain_confirm_images,
    )
