"""Prompts for one unlearning request: target/anchor pairs, preserve and replay prompts (where their
concept words sit among the tokens: unlearning/attention.py `word_token_mask`).

A world builds them from its own vocabulary (the shapes world: unlearning/shapes/prompts.py); a model
without one (any other base, which takes any text) gets `open_prompts`, generic templates around the
concept text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GENERIC_TEMPLATES = ("{}", "a picture of {}", "a photo of {}", "an image of {}")


@dataclass(frozen=True)
class ConceptPairs:
    """Prompts naming one concept, each paired with the prompt that names its anchor instead."""

    concept: str
    target: list[str]
    anchor: list[str]
    target_words: list[str]  # the word used in each target prompt
    anchor_words: list[str]


@dataclass(frozen=True)
class RequestPrompts:
    target: list[str]  # prompts naming the target (or a synonym)
    anchor: list[str]  # the same prompts with the target word replaced by the anchor
    target_words: list[str]  # the word used in each target prompt
    anchor_words: list[str]
    preserve: list[str]  # related, non-target concepts, distilled from the parent
    replay: list[str]  # prompts of concepts erased earlier, distilled from the parent (no rebound)
    earlier: tuple[ConceptPairs, ...] = ()  # target/anchor pairs of every concept erased earlier (closed forms)


def replace_word(prompt: str, word: str, replacement: str) -> str:
    """`prompt` with the first whole-word `word` replaced (spaces and commas tidied when it is removed)."""
    replaced = re.sub(rf"\b{re.escape(word)}\b", replacement, prompt, count=1)
    return re.sub(r"\s+", " ", replaced).replace(" ,", ",").strip()


def concept_words(concept: str, synonyms: tuple[str, ...]) -> list[str]:
    """The words that name the target: the concept, then the requested synonyms (no repeats)."""
    return list(dict.fromkeys([concept.strip().lower(), *(s.strip().lower() for s in synonyms)]))


def open_prompts(
    concept: str,
    *,
    synonyms: tuple[str, ...] = (),
    anchor: str | None = None,
    preserve: tuple[str, ...] = (),
    erased: tuple[str, ...] = (),
    per_concept: int = 24,
) -> RequestPrompts:
    """Prompts for a model without a vocabulary: generic templates around the concept text."""
    words, anchor_word = concept_words(concept, synonyms), (anchor or "").strip().lower()
    target, anchors, target_words, anchor_words = [], [], [], []
    for k in range(per_concept):
        template, word = GENERIC_TEMPLATES[k % len(GENERIC_TEMPLATES)], words[k % len(words)]
        target.append(template.format(word))
        anchors.append(template.format(anchor_word).strip() if anchor_word else "")
        target_words.append(word)
        anchor_words.append(anchor_word)

    def generic(name: str, count: int) -> list[str]:
        return [GENERIC_TEMPLATES[k % len(GENERIC_TEMPLATES)].format(name) for k in range(count)]

    return RequestPrompts(
        target,
        anchors,
        target_words,
        anchor_words,
        preserve=[p for name in preserve for p in generic(name, per_concept // 2)],
        replay=[p for name in erased for p in generic(name, per_concept // 2)],
    )
