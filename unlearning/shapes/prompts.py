"""The shapes world's prompts: distinct phrasings of a concept, and the prompt sets of one request.

A phrasing fixes the template, the word naming the concept (its name or a synonym), the other
attribute and the colour. `phrasings` draws distinct ones from one fixed, seeded order of every
combination, skipping those that ask for an avoided concept: evaluation plans (plan.py) and request
prompts both use it.

Request prompts: target prompts name the target (its name, requested synonyms, the vocabulary's
synonyms); anchor prompts replace the target word by the anchor (default: a surrogate concept of the
same domain, `default_anchor`: square for objects, solid for styles). Preserve prompts cover the named
preserve concepts and `preserve_per_concept` prompts of every other concept of the world (prior
preservation over the whole world); replay prompts hold every concept erased earlier, and `earlier`
their target/anchor pairs.

Template sets: the four training templates ("train"), or the erasing methods' own ("erase"): the
training templates and eight phrasings more. Neither holds a held-out evaluation template: erasure
is judged on phrasings the method never saw (a test checks).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from unlearning.prompts import ConceptPairs, RequestPrompts, concept_words, replace_word
from unlearning.shapes.vocabulary import (
    COLOUR_NAMES,
    DOMAINS,
    SYNONYMS,
    TRAIN_TEMPLATES,
    Scene,
    canonical,
    caption,
    domain_of,
)

# What an erased concept becomes when no anchor is given: another concept of its domain, one the base
# draws as itself (the first of these that is neither the target nor erased). Not a generic word: what
# the base draws when unsure includes the target itself ("a red striped shape" is a circle in 7 of 36
# draws, "a red circle" without a style is dotted in 19 of 36; bench/RESULTS.md), and an edit towards
# it cannot erase more than that.
SURROGATES = {"object": ("square", "triangle", "cross"), "style": ("solid", "gradient", "speckled")}


def default_anchor(domain: str, avoid: set[str]) -> str:
    """The surrogate an erased concept of `domain` becomes: the first not in `avoid`."""
    return next(s for s in SURROGATES[domain] if s not in avoid)


ERASE_TEMPLATES: tuple[str, ...] = TRAIN_TEMPLATES + (
    "{colour} {style} {object}",
    "the {object} is {colour} and {style}",
    "a {colour} {object} with a {style} fill",
    "{style} {object}",
    "a {object}",
    "an illustration: {colour} {object}, {style} surface",
    "a {style} {object} on a plain background",
    "one {colour} {style} {object}",
)
TEMPLATE_SETS = {"train": TRAIN_TEMPLATES, "erase": ERASE_TEMPLATES}


@dataclass(frozen=True)
class Phrasing:
    scene: Scene
    word: str  # the word that names the concept in the prompt
    prompt: str


def phrasings(
    concept: str, words: list[str], templates: tuple[str, ...], count: int, avoid: set[str]
) -> list[Phrasing]:
    """`count` distinct phrasings of `concept` (named by one of `words`), none asking for an avoided
    concept; fewer if the world has fewer. Templates that do not name the concept's domain are skipped."""
    domain = domain_of(concept)
    other_domain = "style" if domain == "object" else "object"
    usable = tuple(t for t in templates if "{" + domain + "}" in t)
    combinations = list(itertools.product(range(len(words)), range(len(usable)), DOMAINS[other_domain], COLOUR_NAMES))
    random.Random(f"{concept}|{'|'.join(words)}|{'|'.join(usable)}").shuffle(combinations)  # one fixed order
    chosen, seen = [], set()
    for word_index, template_index, other, colour in combinations:
        if other in avoid:
            continue
        scene = Scene(concept, other, colour) if domain == "object" else Scene(other, concept, colour)
        word = words[word_index]
        prompt = caption(scene, usable[template_index], **{f"{domain}_word": word})
        if prompt not in seen:
            seen.add(prompt)
            chosen.append(Phrasing(scene, word, prompt))
        if len(chosen) == count:
            break
    return chosen


def concept_pairs(
    concept: str,
    *,
    synonyms: tuple[str, ...] = (),
    anchor: str | None = None,
    avoid: set[str],
    count: int,
    templates: tuple[str, ...],
) -> ConceptPairs:
    """Target prompts naming `concept` and their anchor prompts (the word replaced by the anchor)."""
    domain, name = domain_of(concept), canonical(concept)
    words = concept_words(concept, synonyms)
    words += [s for s in SYNONYMS.get(name, ()) if s not in words]
    anchor_word = default_anchor(domain, avoid | {name}) if anchor is None else anchor.strip().lower()
    chosen = phrasings(name, words, templates, count, avoid)
    return ConceptPairs(
        name,
        [p.prompt for p in chosen],
        [replace_word(p.prompt, p.word, anchor_word) for p in chosen],
        [p.word for p in chosen],
        [anchor_word] * len(chosen),
    )


def concept_prompts(name: str, avoid: set[str], count: int, templates: tuple[str, ...] = TRAIN_TEMPLATES) -> list[str]:
    """`count` prompts asking for concept `name` by its name, avoiding the concepts in `avoid`."""
    concept = canonical(name)
    return [p.prompt for p in phrasings(concept, [concept], templates, count, avoid)]


def shapes_prompts(
    concept: str,
    *,
    synonyms: tuple[str, ...] = (),
    anchor: str | None = None,
    preserve: tuple[str, ...] = (),
    erased: tuple[str, ...] = (),
    per_concept: int = 24,
    preserve_per_concept: int = 2,
    templates: str = "train",
) -> RequestPrompts:
    """Prompt sets for erasing shapes concept `concept` (see the module docstring).

    Raises:
        ValueError: `concept` is not a concept of the shapes world.
    """
    template_set = TEMPLATE_SETS[templates]
    target_name = canonical(concept)
    erased_names = [canonical(e) for e in erased]
    avoid = {target_name, *erased_names}
    pairs = concept_pairs(
        concept, synonyms=synonyms, anchor=anchor, avoid=avoid, count=per_concept, templates=template_set
    )
    named = {canonical(p) for p in preserve}
    preserve_prompts = [p for name in preserve for p in concept_prompts(name, avoid, per_concept // 2)]
    for names in DOMAINS.values():  # prior preservation over the rest of the world, not only the named concepts
        for name in names:
            if name not in avoid and name not in named:
                preserve_prompts += concept_prompts(name, avoid, preserve_per_concept, template_set)
    replay_prompts = [p for name in erased_names for p in concept_prompts(name, avoid, per_concept // 2)]
    earlier = tuple(
        concept_pairs(name, avoid=avoid, count=per_concept, templates=template_set) for name in erased_names
    )
    return RequestPrompts(
        pairs.target, pairs.anchor, pairs.target_words, pairs.anchor_words, preserve_prompts, replay_prompts, earlier
    )
