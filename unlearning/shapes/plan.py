"""The shapes world's evaluation plans (the groups are those of unlearning/evaluation/plan.py).

Each set is drawn as distinct phrasings x seeds (unlearning/shapes/prompts.py `phrasings`: template,
word, other attribute and colour from one fixed, seeded order of every combination), filtered to
those that ask for no avoided concept (the target and every concept erased earlier): so a retain
prompt never asks for something the model was told to forget, and the prompts of a concept change
from one request to the next only where they would name a newly erased concept. Seeds are a digest
of (prompt, index), so the same prompt and seed come back in every plan and the base model's images
come from the cache.

- forget/gate: the target named as requested, training templates;
- forget/heldout: held-out templates (never seen in training), the target's name;
- forget/synonyms: the target's synonyms (requested and the vocabulary's), every template;
- rebound/<c>: each concept erased earlier, named or by a synonym, every template;
- retain/in|cross/<c>: every other concept, training templates.

Without a target, every concept is a retain case (a plain quality check of a model).
"""

from __future__ import annotations

from unlearning.evaluation.plan import PLAN_SEED, EvaluationPlan, PlanError, PlanSize, PromptCase, case_seed
from unlearning.shapes.prompts import phrasings
from unlearning.shapes.vocabulary import DOMAINS, HELDOUT_TEMPLATES, SYNONYMS, TRAIN_TEMPLATES, canonical, domain_of

__all__ = ["PLAN_SEED", "PlanError", "case_seed", "shapes_plan", "validate_concepts"]  # PlanError's old home


def validate_concepts(target: str | None, erased: tuple[str, ...]) -> None:
    """Raises PlanError naming every unknown concept (synonyms are accepted and mapped)."""
    problems = []
    for concept in ((target,) if target else ()) + tuple(erased):
        try:
            domain_of(concept)
        except ValueError as error:
            problems.append(str(error))
    if target and canonical(target) in {canonical(e) for e in erased}:
        problems.append(f"target {target!r} is also listed as erased")
    if problems:
        raise PlanError("; ".join(problems))


def shapes_plan(
    target: str | None = None,
    *,
    synonyms: tuple[str, ...] = (),
    erased: tuple[str, ...] = (),
    size: PlanSize = PlanSize(),
) -> EvaluationPlan:
    """Build the evaluation plan for the shapes world.

    Raises:
        PlanError: an unknown concept, a target also listed as erased, or a set of no images.
    """
    if size.forget_images < 1 or size.retain_images < 1:
        raise PlanError("every set needs at least one image")
    validate_concepts(target, erased)
    target_name = canonical(target) if target else None
    erased_names = tuple(dict.fromkeys(canonical(c) for c in erased))
    avoid = set(erased_names) | ({target_name} if target_name else set())
    cases: list[PromptCase] = []

    def add(group: str, concept: str, words: list[str], templates: tuple[str, ...], images: int) -> None:
        count, seeds = size.phrasings(images)
        for phrasing in phrasings(concept, words, templates, count, avoid):
            scene, prompt = phrasing.scene, phrasing.prompt
            attributes = (("object", scene.object), ("style", scene.style), ("colour", scene.colour))
            for index in range(seeds):
                cases.append(
                    PromptCase(
                        group,
                        concept,
                        domain_of(concept),
                        attributes,
                        prompt,
                        case_seed(prompt, size.seed_offset + index),
                    )
                )

    every_template = TRAIN_TEMPLATES + HELDOUT_TEMPLATES
    if target_name:
        add("forget/gate", target_name, [target.strip().lower()], TRAIN_TEMPLATES, size.forget_images)
        add("forget/heldout", target_name, [target_name], HELDOUT_TEMPLATES, size.forget_images)
        synonym_words = list(dict.fromkeys([*(s.strip().lower() for s in synonyms), *SYNONYMS.get(target_name, ())]))
        add("forget/synonyms", target_name, synonym_words or [target_name], every_template, size.forget_images)
    for concept in erased_names:
        add(f"rebound/{concept}", concept, [concept, *SYNONYMS.get(concept, ())], every_template, size.forget_images)
    target_domain = domain_of(target_name) if target_name else None
    for domain, concepts in DOMAINS.items():
        kind = "in" if domain == target_domain else "cross"
        retained = [concept for concept in concepts if concept not in avoid]
        for concept in retained:
            add(
                f"retain/{kind}/{concept}",
                concept,
                [concept],
                TRAIN_TEMPLATES,
                size.per_retained_concept(len(retained)),
            )
    return EvaluationPlan(target_name, tuple(synonyms), erased_names, size, tuple(cases))
