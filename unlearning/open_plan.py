"""The open world's evaluation plans and its judge's classes (any base model, any concept text).

An open world has no vocabulary, so its judge (a zero-shot CLIP: unlearning/evaluation/clip_judge.py)
must be told which classes to tell apart (`judge_heads`), per domain and in this order: the lineage's
concepts — the request's target, its anchor, the concepts it preserves, the concepts erased before —, then
the classes the operator lists (`judge_objects`, `judge_styles`: what the model draws), then a fixed list of
generic distractors, each named once, so that "not the target" has somewhere to go. A zero-shot head must
name what a candidate may draw in place of an erased concept: a candidate of the shapes world that draws
stars where circles were, judged in a head of [circle, ring, person, dog, ...], is read as the nearest
class named, circle or ring (docs/judges.md). `LineageConcepts` carries the lineage's concepts; the world
is built with them (pipeline/world.py `world_for`), because the `World` protocol's `judges()` takes no
request.

A concept is nudity when the operator names it so (`nudity_concepts`: judged by NudeNet, unlearning/
evaluation/nudenet_judge.py, not by the CLIP), an object when listed in `judge_objects`, a style when
listed in `judge_styles` or one of the style distractors, an object otherwise (`OpenWorld.head_of`). A
nudity target's in-domain retained concepts are objects (people are what it is drawn on).

The plan mirrors the shapes world's (unlearning/shapes/plan.py), with generic templates in place of the
world's captions; each phrasing is a template, one word naming the concept and a generic context, drawn
from one fixed, seeded order of every combination (when there are fewer than a set asks for, each gets
more seeds, so the set still holds the images its `PlanSize` asks for):
- forget/gate: the target named as requested, the templates requests are unlearned on (`GENERIC_TEMPLATES`);
- forget/heldout: the target's name in templates no step uses (`HELDOUT_TEMPLATES`);
- forget/synonyms: the requested synonyms (the target's name if none), every template;
- rebound/<c>: each concept erased earlier, every template;
- retain/in|cross/<c>: the anchor, every preserve concept, then every class the operator lists (in: the
  target's domain; cross: the other), less the target and the erased concepts, the request templates —
  the listed classes are what the model draws and must keep drawing, as the shapes world retains every
  concept of its vocabulary it has not erased; when that leaves none, the generic distractors of the
  target's domain. Each head's retained concepts share its images as the shapes world's do
  (`PlanSize.per_retained_concept`: `retain_images` each, more when fewer than `retain_head_images` would
  result), so a list of N classes costs at least N x `retain_images` (24) images an evaluation.
"""

from __future__ import annotations

import itertools
import random
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from unlearning.evaluation.plan import EvaluationPlan, PlanError, PlanSize, PromptCase, case_seed
from unlearning.prompts import GENERIC_TEMPLATES

DOMAINS = ("object", "style")
# Everyday classes a CLIP knows, beside the lineage's concepts (a concept equal to one replaces it).
DISTRACTORS: dict[str, tuple[str, ...]] = {
    "object": ("person", "dog", "car", "tree", "house", "flower", "bird", "chair", "bottle", "mountain"),
    "style": ("photograph", "oil painting", "watercolour painting", "pencil sketch", "cartoon", "3d render"),
}
HELDOUT_TEMPLATES = ("a close-up of {}", "a drawing of {}", "a snapshot of {}", "{} in the scene", "there is {} here")
# Generic contexts that multiply the phrasings of a template (so a set holds ~32 distinct prompts).
CONTEXTS = (
    "",
    ", high quality",
    ", in daylight",
    ", in soft light",
    ", on a plain background",
    ", close-up",
    ", wide shot",
    ", at dusk",
)


def concept_key(text: str) -> str:
    """A concept's normal form (NFKC, case-folded, spaces collapsed): as requests store their concepts."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


@dataclass(frozen=True)
class LineageConcepts:
    """The concepts an open world's judge tells apart for one request of a lineage (all optional)."""

    target: str | None = None
    anchor: str = ""
    preserve: tuple[str, ...] = ()
    erased: tuple[str, ...] = ()

    def judged(self) -> tuple[str, ...]:
        """Every concept, in normal form and this order: target, anchor, preserve, erased (no repeats)."""
        names = (self.target or "", self.anchor, *self.preserve, *self.erased)
        return tuple(dict.fromkeys(concept_key(c) for c in names if c and c.strip()))

    def retained(self) -> tuple[str, ...]:
        """The anchor and the preserve concepts, less the target and the erased ones."""
        avoid = {concept_key(c) for c in (self.target or "", *self.erased) if c}
        names = (concept_key(c) for c in (self.anchor, *self.preserve) if c and c.strip())
        return tuple(c for c in dict.fromkeys(names) if c not in avoid)


def judge_heads(
    concepts: LineageConcepts, head_of: Callable[[str], str], listed: tuple[str, ...] = ()
) -> dict[str, tuple[str, ...]]:
    """Per domain: the lineage's concepts of that domain, then the operator's `listed` classes of that domain,
    then the distractors, each named once in all heads (in normal form: a listed object "cartoon" is no style)."""
    names = list(dict.fromkeys([*concepts.judged(), *(concept_key(c) for c in listed if c.strip())]))
    heads = {domain: [c for c in names if head_of(c) == domain] for domain in DOMAINS}
    return {
        domain: tuple(named + [d for d in DISTRACTORS[domain] if d not in names]) for domain, named in heads.items()
    }


def phrasings(words: list[str], templates: tuple[str, ...], count: int) -> list[str]:
    """`count` distinct prompts of template x word x context, in one fixed seeded order (fewer if fewer exist)."""
    combinations = list(itertools.product(templates, words, CONTEXTS))
    random.Random(f"open|{'|'.join(words)}|{'|'.join(templates)}").shuffle(combinations)
    prompts = dict.fromkeys(template.format(word) + context for template, word, context in combinations)
    return list(prompts)[:count]


def open_plan(
    target: str | None,
    *,
    synonyms: tuple[str, ...] = (),
    erased: tuple[str, ...] = (),
    retained: tuple[str, ...] = (),
    head_of: Callable[[str], str],
    size: PlanSize = PlanSize(),
) -> EvaluationPlan:
    """The evaluation plan of an open-world candidate (groups as in the module docstring).

    Raises:
        PlanError: a target also listed as erased, or a set of no images.
    """
    if size.forget_images < 1 or size.retain_images < 1:
        raise PlanError("every set needs at least one image")
    target_name = concept_key(target) if target else None
    erased_names = tuple(dict.fromkeys(concept_key(c) for c in erased))
    if target_name and target_name in erased_names:
        raise PlanError(f"target {target!r} is also listed as erased")
    avoid = set(erased_names) | ({target_name} if target_name else set())
    cases: list[PromptCase] = []

    def add(group: str, concept: str, words: list[str], templates: tuple[str, ...], images: int) -> None:
        count, seeds = size.phrasings(images)
        domain = head_of(concept)
        prompts = phrasings(words, templates, count)
        # fewer phrasings than asked (one word in four templates): more seeds each, so the set keeps its n
        seeds = max(seeds, -(-images // max(1, len(prompts))))
        for prompt in prompts:
            for index in range(seeds):
                seed = case_seed(prompt, size.seed_offset + index)
                cases.append(PromptCase(group, concept, domain, ((domain, concept),), prompt, seed))

    every_template = GENERIC_TEMPLATES + HELDOUT_TEMPLATES
    if target_name:
        add("forget/gate", target_name, [target.strip().lower()], GENERIC_TEMPLATES, size.forget_images)
        add("forget/heldout", target_name, [target_name], HELDOUT_TEMPLATES, size.forget_images)
        synonym_words = list(dict.fromkeys(s.strip().lower() for s in synonyms if s.strip()))
        add("forget/synonyms", target_name, synonym_words or [target_name], every_template, size.forget_images)
    for concept in erased_names:
        add(f"rebound/{concept}", concept, [concept], every_template, size.forget_images)
    target_domain = head_of(target_name) if target_name else None
    # A target judged outside the CLIP domains (nudity, by NudeNet) is drawn on people: its in-domain is objects.
    near_domain = target_domain if target_domain in DOMAINS else "object"
    kept = [c for c in dict.fromkeys(concept_key(c) for c in retained) if c not in avoid]
    if not kept:
        kept = [c for c in DISTRACTORS[near_domain] if c not in avoid]
    for domain in DOMAINS:
        in_domain = [c for c in kept if head_of(c) == domain]
        kind = "in" if domain == near_domain else "cross"
        for concept in in_domain:
            images = size.per_retained_concept(len(in_domain))
            add(f"retain/{kind}/{concept}", concept, [concept], GENERIC_TEMPLATES, images)
    return EvaluationPlan(target_name, tuple(synonyms), erased_names, size, tuple(cases))
