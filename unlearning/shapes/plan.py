"""The shapes world's evaluation plans (the groups are those of unlearning/evaluation/plan.py).

Without a target, every concept is a retain case (a plain quality check of a model). The attributes
a case does not test are drawn from concepts that are neither the target nor erased, so a retain
prompt never asks for something the model was told to forget.
"""

from __future__ import annotations

from unlearning.evaluation.plan import EvaluationPlan, PromptCase
from unlearning.shapes.vocabulary import (
    COLOUR_NAMES,
    DOMAINS,
    HELDOUT_TEMPLATES,
    SYNONYMS,
    TRAIN_TEMPLATES,
    Scene,
    canonical,
    caption,
    domain_of,
)

PLAN_SEED = 700_000_000  # evaluation seeds live far from training seeds


class PlanError(ValueError):
    """An evaluation that cannot be planned: an unknown concept, a target also erased, no samples."""


def _scene_for(concept: str, domain: str, k: int, avoid: set[str]) -> Scene:
    """A scene showing `concept`, other attributes rotating through allowed concepts and colours."""
    other_domain = "style" if domain == "object" else "object"
    others = [c for c in DOMAINS[other_domain] if c not in avoid] or list(DOMAINS[other_domain])
    other = others[k % len(others)]
    colour = COLOUR_NAMES[(k * 5 + len(concept)) % len(COLOUR_NAMES)]
    return Scene(concept, other, colour) if domain == "object" else Scene(other, concept, colour)


def _prompt(scene: Scene, template: str, domain: str, word: str | None = None) -> str:
    if word is None:
        return caption(scene, template)
    return (
        caption(scene, template, object_word=word) if domain == "object" else caption(scene, template, style_word=word)
    )


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
    target: str | None = None, *, synonyms: tuple[str, ...] = (), erased: tuple[str, ...] = (), samples: int = 6
) -> EvaluationPlan:
    """Build the evaluation plan for the shapes world.

    Raises:
        PlanError: an unknown concept, a target also listed as erased, or samples < 1.
    """
    if samples < 1:
        raise PlanError("samples must be at least 1")
    validate_concepts(target, erased)
    target_name = canonical(target) if target else None
    erased_names = tuple(canonical(c) for c in erased)
    avoid = set(erased_names) | ({target_name} if target_name else set())
    cases: list[PromptCase] = []

    def add(group: str, concept: str, domain: str, templates: tuple[str, ...], words: list[str | None]) -> None:
        for k in range(samples):
            scene = _scene_for(concept, domain, k, avoid)
            prompt = _prompt(scene, templates[k % len(templates)], domain, words[k % len(words)])
            attributes = (("object", scene.object), ("style", scene.style), ("colour", scene.colour))
            cases.append(PromptCase(group, concept, domain, attributes, prompt, PLAN_SEED + len(cases)))

    if target_name:
        domain = domain_of(target_name)
        add("forget/gate", target_name, domain, TRAIN_TEMPLATES, [target.strip().lower()])
        add("forget/heldout", target_name, domain, HELDOUT_TEMPLATES, [None])
        synonym_words = list(dict.fromkeys([*(s.strip().lower() for s in synonyms), *SYNONYMS.get(target_name, ())]))
        add("forget/synonyms", target_name, domain, TRAIN_TEMPLATES + HELDOUT_TEMPLATES, synonym_words or [None])
    for concept in erased_names:
        add(f"rebound/{concept}", concept, domain_of(concept), TRAIN_TEMPLATES, [None])
    target_domain = domain_of(target_name) if target_name else None
    for domain, concepts in DOMAINS.items():
        kind = "in" if domain == target_domain else "cross"
        for concept in concepts:
            if concept not in avoid:
                add(f"retain/{kind}/{concept}", concept, domain, TRAIN_TEMPLATES, [None])
    return EvaluationPlan(target_name, tuple(synonyms), erased_names, samples, tuple(cases))
