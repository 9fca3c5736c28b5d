"""The vocabulary of the shapes world: concepts, synonyms, colours and caption templates.

Two concept domains — objects and styles — so that an unlearning request in one domain can be
checked for erosion in its own domain (in-domain retain) and in the other (cross-domain retain).
Colours are a third attribute that nothing erases; they measure prompt adherence.

Synonyms appear in training captions (a real model sees both "circle" and "disc"), so erasing
"circle" and then asking for a "disc" tests whether an erasure generalises to paraphrases. Held-out
templates never appear in training; they test whether it generalises to new phrasings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

OBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "ring")
STYLES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered", "gradient", "speckled")

# RGB in 0..1, chosen far apart in hue so that a jittered render keeps its name.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "orange": (0.98, 0.55, 0.05),
    "yellow": (0.95, 0.88, 0.10),
    "green": (0.10, 0.65, 0.20),
    "blue": (0.12, 0.30, 0.90),
    "purple": (0.58, 0.15, 0.75),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disc",),
    "square": ("block",),
    "triangle": ("pyramid",),
    "star": ("pentagram",),
    "heart": ("love symbol",),
    "cross": ("plus sign",),
    "diamond": ("rhombus",),
    "ring": ("hoop",),
    "solid": ("plain",),
    "striped": ("stripy",),
    "dotted": ("polka-dot",),
    "checkered": ("chequered",),
    "gradient": ("ombre",),
    "speckled": ("flecked",),
}

# Caption templates. Fields: {colour} {style} {object}.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a {colour} {style} {object}",
    "a {style} {object} in {colour}",
    "a picture of a {colour} {object} with a {style} pattern",
    "{colour} {object}, {style}",
)
# Never seen in training: used only by evaluation (generalisation to new phrasings).
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "an image showing a {style} {colour} {object}",
    "a drawing of one {object}, coloured {colour}, with {style} texture",
)

# How often a training caption uses a synonym instead of the concept's name.
SYNONYM_RATE = 0.25
# How often a training caption is dropped (empty prompt) so classifier-free guidance works.
UNCONDITIONAL_RATE = 0.1

DOMAINS: dict[str, tuple[str, ...]] = {"object": OBJECTS, "style": STYLES}


@dataclass(frozen=True)
class Scene:
    """What one image shows: the three attributes a caption names and the detector judges."""

    object: str
    style: str
    colour: str


def domain_of(concept: str) -> str:
    """Return "object" or "style" for a concept name or synonym.

    Raises:
        ValueError: the word is not a concept of the shapes world.
    """
    name = canonical(concept)
    for domain, names in DOMAINS.items():
        if name in names:
            return domain
    raise ValueError(f"unknown concept {concept!r}; known: {', '.join(OBJECTS + STYLES)}")


def canonical(word: str) -> str:
    """Map a synonym to its concept name; concept names map to themselves; others are returned as is."""
    word = word.strip().lower()
    for name, synonyms in SYNONYMS.items():
        if word in synonyms:
            return name
    return word


def caption(scene: Scene, template: str, *, object_word: str | None = None, style_word: str | None = None) -> str:
    """Fill a template for a scene, optionally naming object or style by a synonym."""
    return template.format(
        colour=scene.colour,
        style=style_word or scene.style,
        object=object_word or scene.object,
    )


def training_captions(scene: Scene) -> list[str]:
    """Every caption training may use for a scene: train templates x (name or synonym) per domain."""
    object_words = (scene.object, *SYNONYMS[scene.object])
    style_words = (scene.style, *SYNONYMS[scene.style])
    return [
        caption(scene, t, object_word=o, style_word=s)
        for t in TRAIN_TEMPLATES
        for o in object_words
        for s in style_words
    ]


def sample_training_caption(scene: Scene, rng: random.Random) -> str:
    """One training caption: a train template, each concept named by a synonym with SYNONYM_RATE."""
    template = rng.choice(TRAIN_TEMPLATES)
    object_word = rng.choice(SYNONYMS[scene.object]) if rng.random() < SYNONYM_RATE else scene.object
    style_word = rng.choice(SYNONYMS[scene.style]) if rng.random() < SYNONYM_RATE else scene.style
    return caption(scene, template, object_word=object_word, style_word=style_word)


def all_scenes() -> list[Scene]:
    """Every object x style x colour combination, in a fixed order."""
    return [Scene(o, s, c) for o in OBJECTS for s in STYLES for c in COLOUR_NAMES]
