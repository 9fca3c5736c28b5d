"""Prompts for one unlearning request: target/anchor pairs, preserve and replay prompts, and the
positions of concept words among the tokens (for the cross-attention loss).

On the shapes world the prompts come from its vocabulary and training templates; for any other model
from generic templates around the concept text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from unlearning.shapes.vocabulary import (
    COLOUR_NAMES,
    DOMAINS,
    SYNONYMS,
    TRAIN_TEMPLATES,
    Scene,
    canonical,
    caption,
)

GENERIC_TEMPLATES = ("{}", "a picture of {}", "a photo of {}", "an image of {}")
# What an erased concept becomes when no anchor is given: a generic word of its domain (objects),
# or nothing (styles: "a red striped heart" -> "a red heart").
DEFAULT_ANCHORS = {"object": "shape", "style": ""}


@dataclass(frozen=True)
class RequestPrompts:
    target: list[str]  # prompts naming the target (or a synonym)
    anchor: list[str]  # the same prompts with the target word replaced by the anchor
    target_words: list[str]  # the word used in each target prompt
    anchor_words: list[str]
    preserve: list[str]  # related, non-target concepts, distilled from the parent
    replay: list[str]  # prompts of concepts erased earlier, distilled from the parent (no rebound)


def _shapes_domain(concept: str) -> str | None:
    name = canonical(concept)
    for domain, names in DOMAINS.items():
        if name in names:
            return domain
    return None


def _replace_word(prompt: str, word: str, replacement: str) -> str:
    replaced = re.sub(rf"\b{re.escape(word)}\b", replacement, prompt, count=1)
    return re.sub(r"\s+", " ", replaced).replace(" ,", ",").strip()


def _scenes_with(concept: str, domain: str, avoid: set[str], count: int) -> list[Scene]:
    other_domain = "style" if domain == "object" else "object"
    others = [c for c in DOMAINS[other_domain] if c not in avoid]
    scenes = []
    for k in range(count):
        other = others[k % len(others)]
        colour = COLOUR_NAMES[(k * 7 + 3) % len(COLOUR_NAMES)]
        scenes.append(Scene(concept, other, colour) if domain == "object" else Scene(other, concept, colour))
    return scenes


def build_prompts(concept: str, *, synonyms: tuple[str, ...] = (), anchor: str | None = None,
                  preserve: tuple[str, ...] = (), erased: tuple[str, ...] = (), per_concept: int = 24) -> RequestPrompts:
    """Prompt sets for erasing `concept` (see the module docstring)."""
    domain = _shapes_domain(concept)
    avoid = {canonical(concept), *(canonical(e) for e in erased)}
    words = [concept.strip().lower(), *(s.strip().lower() for s in synonyms)]
    if domain is not None:
        words += [s for s in SYNONYMS.get(canonical(concept), ()) if s not in words]
    anchor_word = DEFAULT_ANCHORS.get(domain or "object", "") if anchor is None else anchor.strip().lower()

    target, anchors, target_words, anchor_words = [], [], [], []
    if domain is not None:
        scenes = _scenes_with(canonical(concept), domain, avoid, per_concept)
        for k, scene in enumerate(scenes):
            word = words[k % len(words)]
            template = TRAIN_TEMPLATES[k % len(TRAIN_TEMPLATES)]
            text = caption(scene, template, **({"object_word": word} if domain == "object" else {"style_word": word}))
            target.append(text)
            anchors.append(_replace_word(text, word, anchor_word))
            target_words.append(word)
            anchor_words.append(anchor_word)
    else:
        for k in range(per_concept):
            word = words[k % len(words)]
            text = GENERIC_TEMPLATES[k % len(GENERIC_TEMPLATES)].format(word)
            target.append(text)
            anchors.append(GENERIC_TEMPLATES[k % len(GENERIC_TEMPLATES)].format(anchor_word).strip() if anchor_word else "")
            target_words.append(word)
            anchor_words.append(anchor_word)

    def concept_prompts(name: str, count: int) -> list[str]:
        d = _shapes_domain(name)
        if d is None:
            return [GENERIC_TEMPLATES[k % len(GENERIC_TEMPLATES)].format(name) for k in range(count)]
        return [caption(s, TRAIN_TEMPLATES[k % len(TRAIN_TEMPLATES)]) for k, s in enumerate(_scenes_with(canonical(name), d, avoid, count))]

    preserve_prompts = [p for name in preserve for p in concept_prompts(name, per_concept // 2)]
    if domain is not None:  # prior preservation over the rest of the world, not only the named concepts
        for d, names in DOMAINS.items():
            for name in names:
                if name not in avoid and name not in {canonical(p) for p in preserve}:
                    preserve_prompts += concept_prompts(name, 2)
    replay_prompts = [p for name in erased for p in concept_prompts(name, per_concept // 2)]
    return RequestPrompts(target, anchors, target_words, anchor_words, preserve_prompts, replay_prompts)


def word_token_mask(tokenizer, prompts: list[str], words: list[str], max_length: int) -> torch.Tensor:
    """(N, max_length) bool: True at the tokens of `words[i]` inside `prompts[i]` (first occurrence)."""
    mask = torch.zeros(len(prompts), max_length, dtype=torch.bool)
    for i, (prompt, word) in enumerate(zip(prompts, words)):
        if not word:
            continue
        ids = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True).input_ids
        word_ids = tokenizer(word, add_special_tokens=False).input_ids
        for start in range(len(ids) - len(word_ids) + 1):
            if ids[start : start + len(word_ids)] == word_ids:
                mask[i, start : start + len(word_ids)] = True
                break
    return mask
