"""The shapes world's prompts for one unlearning request, from its vocabulary and training templates.

Target prompts rotate the target's words (name, requested synonyms, the vocabulary's synonyms) through
scenes whose other attributes avoid every erased concept; the anchor prompt replaces the target word
by the anchor (default: "shape" for objects, nothing for styles). Preserve prompts cover the named
preserve concepts and, two prompts each, every other concept of the world (prior preservation over
the whole world); replay prompts hold every concept erased earlier.
"""

from __future__ import annotations

from unlearning.prompts import RequestPrompts, concept_words, replace_word
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

# What an erased concept becomes when no anchor is given: a generic word of its domain (objects),
# or nothing (styles: "a red striped heart" -> "a red heart").
DEFAULT_ANCHORS = {"object": "shape", "style": ""}


def scenes_with(concept: str, domain: str, avoid: set[str], count: int) -> list[Scene]:
    """`count` scenes showing `concept`, the other attribute rotating through the concepts not avoided."""
    other_domain = "style" if domain == "object" else "object"
    others = [c for c in DOMAINS[other_domain] if c not in avoid]
    scenes = []
    for k in range(count):
        other = others[k % len(others)]
        colour = COLOUR_NAMES[(k * 7 + 3) % len(COLOUR_NAMES)]
        scenes.append(Scene(concept, other, colour) if domain == "object" else Scene(other, concept, colour))
    return scenes


def concept_prompts(name: str, avoid: set[str], count: int, templates: tuple[str, ...] = TRAIN_TEMPLATES) -> list[str]:
    """`count` prompts asking for concept `name` (canonical), avoiding the concepts in `avoid`."""
    concept = canonical(name)
    return [
        caption(s, templates[k % len(templates)])
        for k, s in enumerate(scenes_with(concept, domain_of(concept), avoid, count))
    ]


def shapes_prompts(
    concept: str,
    *,
    synonyms: tuple[str, ...] = (),
    anchor: str | None = None,
    preserve: tuple[str, ...] = (),
    erased: tuple[str, ...] = (),
    per_concept: int = 24,
    templates: tuple[str, ...] = TRAIN_TEMPLATES,
) -> RequestPrompts:
    """Prompt sets for erasing shapes concept `concept` (see the module docstring).

    Raises:
        ValueError: `concept` is not a concept of the shapes world.
    """
    domain, target_name = domain_of(concept), canonical(concept)
    avoid = {target_name, *(canonical(e) for e in erased)}
    words = concept_words(concept, synonyms)
    words += [s for s in SYNONYMS.get(target_name, ()) if s not in words]
    anchor_word = DEFAULT_ANCHORS[domain] if anchor is None else anchor.strip().lower()

    target, anchors, target_words = [], [], []
    for k, scene in enumerate(scenes_with(target_name, domain, avoid, per_concept)):
        word = words[k % len(words)]
        text = caption(
            scene,
            templates[k % len(templates)],
            **({"object_word": word} if domain == "object" else {"style_word": word}),
        )
        target.append(text)
        anchors.append(replace_word(text, word, anchor_word))
        target_words.append(word)

    named = {canonical(p) for p in preserve}
    preserve_prompts = [p for name in preserve for p in concept_prompts(name, avoid, per_concept // 2)]
    for names in DOMAINS.values():  # prior preservation over the rest of the world, not only the named concepts
        for name in names:
            if name not in avoid and name not in named:
                preserve_prompts += concept_prompts(name, avoid, 2)
    replay_prompts = [p for name in erased for p in concept_prompts(name, avoid, per_concept // 2)]
    return RequestPrompts(target, anchors, target_words, [anchor_word] * len(target), preserve_prompts, replay_prompts)
