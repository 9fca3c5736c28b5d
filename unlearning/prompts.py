"""Prompts for one unlearning request: target/anchor pairs, preserve and replay prompts (where their
concept words sit among the tokens: unlearning/attention.py `word_token_mask`).

A world builds them from its own vocabulary (the shapes world: unlearning/shapes/prompts.py); a model
without one (any other base, which takes any text) gets `open_prompts`, generic templates around the
concept text.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, replace

GENERIC_TEMPLATES = ("{}", "a picture of {}", "a photo of {}", "an image of {}")
# Templates of one vocabulary word, naming no object, style or colour of any world: the sweep's prompts
# (unlearning/evaluation/sweep.py) and a method's broad preserve prompts (`broad_prompts`).
VOCABULARY_TEMPLATES: tuple[str, ...] = (
    "a {word}",
    "a picture of a {word}",
    "{word}",
    "a {word} on a plain background",
    "the {word} in the middle",
    "an image of the {word}",
)


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
    mined: tuple[str, ...] = ()  # broad prompts the parent draws the target for without naming it (mining.py)


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


def digest(text: str) -> int:
    """A stable 32-bit number of `text` (sha256): which half a word or variant falls in, a seed from a prompt."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def vocabulary_words(tokenizer, *, part: str = "sweep") -> list[str]:
    """Whole alphabetic words of the tokenizer's vocabulary (3–12 letters, lower case), in a fixed order.

    The words are split in two halves by a digest of the word: `part="sweep"` (what the sweep judges
    on) and `part="method"` (what a method may use as broad preserve statistics). A method that learns
    from its half is judged on words it never saw. WordPiece continuations ("##ing") and BPE pieces that
    do not end a word (CLIP's vocabulary marks word ends with "</w>") are not words.
    """
    if part not in ("sweep", "method"):
        raise ValueError(f"part must be 'sweep' or 'method', not {part!r}")
    vocabulary = tokenizer.get_vocab()
    bpe = any(token.endswith("</w>") for token in vocabulary)  # CLIP-style BPE: only "</w>" pieces end a word
    words = set()
    for token in vocabulary:
        if token.startswith("##") or (bpe and not token.endswith("</w>")):
            continue
        token = token.removesuffix("</w>")
        if token.isascii() and token.isalpha() and 3 <= len(token) <= 12:
            words.add(token.lower())
    keep = 0 if part == "sweep" else 1
    return sorted(w for w in words if digest(f"lethe-sweep-split|{w}") % 2 == keep)


def name_variants(word: str, *, part: str | None = None) -> list[str]:
    """Rule-made variants of a concept's name (or synonym): what a user might type instead of it.

    Misspellings (each adjacent pair swapped, each letter dropped, each letter doubled), casing, plural,
    repetition, punctuation, split and hyphenated spellings. The name itself is not a variant (the
    forget sets judge it). Multi-word names ("love symbol") vary as a whole. Like the vocabulary, the
    variants split in two halves by a digest: `part="sweep"` (what the sweep judges) and `part="method"`
    (what a method may erase besides the name); None: all of them.
    """
    if part not in (None, "sweep", "method"):
        raise ValueError(f"part must be None, 'sweep' or 'method', not {part!r}")
    word = word.strip()
    variants = [word.upper(), word.capitalize(), word + "s", f"{word} {word}", f"{word}!", f"{word}.", f'"{word}"']
    letters = word.replace(" ", "")
    variants += ["-".join(letters), " ".join(letters)]
    if len(word) >= 4:
        middle = len(word) // 2
        variants.append(word[:middle] + " " + word[middle:])
    for i in range(len(word) - 1):  # swapped neighbours
        if word[i] != word[i + 1] and word[i] != " " and word[i + 1] != " ":
            variants.append(word[:i] + word[i + 1] + word[i] + word[i + 2 :])
    for i in range(len(word)):  # dropped and doubled letters
        if word[i] != " " and len(word) > 3:
            variants.append(word[:i] + word[i + 1 :])
        if word[i] != " ":
            variants.append(word[:i] + word[i] + word[i:])
    variants = [v for v in dict.fromkeys(variants) if v.strip() and v != word]
    if part is None:
        return variants
    keep = 0 if part == "sweep" else 1
    return [v for v in variants if digest(f"lethe-variant-split|{v}") % 2 == keep]


def broad_prompts(tokenizer, count: int, *, seed: int = 0) -> list[str]:
    """`count` prompts of the method's half of the vocabulary (`vocabulary_words(part="method")`), one word
    each in a vocabulary template, seeded: what "everything else" looks like to the text encoder, for a
    method's broad preserve statistics (MACE's generic-prompt covariance, Lu et al. CVPR 2024). The
    sweep judges on the other half, so a method that keeps these is judged on words it never kept."""
    rng = random.Random(f"lethe-broad|{seed}")
    words = vocabulary_words(tokenizer, part="method")
    return [rng.choice(VOCABULARY_TEMPLATES).format(word=w) for w in rng.sample(words, min(count, len(words)))]


def variant_prompts(tokenizer, count: int, *, seed: int = 0) -> list[str]:
    """`count` prompts of rule-made variants (`name_variants(part="method")`: misspellings, spelt-out letters,
    punctuation) of the method's half of the vocabulary in a vocabulary template, seeded ("a papre", "the p a p e
    r in the middle"): the word pieces and letters a misspelt or spelt-out prompt is made of, which whole
    vocabulary words never show the text encoder (continual_uce.py `relocation_variants`)."""
    rng = random.Random(f"lethe-variant-pool|{seed}")
    words = vocabulary_words(tokenizer, part="method")
    prompts = []
    for word in rng.sample(words, min(count, len(words))):
        variants = name_variants(word, part="method")
        if variants:
            prompts.append(rng.choice(VOCABULARY_TEMPLATES).format(word=rng.choice(variants)))
    return prompts


PAIR_COLUMNS = ("target", "anchor", "target_words", "anchor_words")  # what `prefixed_pairs` takes and returns
PREFIX_WORDS = (1, 5)  # how many vocabulary words `with_prefixes` prepends to a pair (inclusive range)


def prefixed_pairs(
    target: list[str],
    anchor: list[str],
    target_words: list[str],
    anchor_words: list[str],
    words: list[str],
    count: int,
    *,
    salt: str,
) -> tuple[list[str], list[str], list[str], list[str]]:
    """`count` more target/anchor pairs: a pair of the given ones (drawn at random) with the same 1–5 words
    of `words` prepended to both prompts ("ridge paper horse a drawing of one circle" with "ridge paper
    horse a drawing of one square"). Why: a discrete-prompt attack (UnlearnDiffAtk, P4D) prepends tokens,
    and a contextual text encoder moves the concept word's embedding with what comes before it — out of
    the span of the phrasings an edit solved over. Pairs in many prefixed contexts put those embeddings
    in the edit's sums. Words that name either side's concept are not used (the word must stay unique)."""
    if not count or not target:
        return [], [], [], []
    named = {part.lower() for phrase in (*target_words, *anchor_words) for part in phrase.split()}
    pool = [w for w in words if w not in named]
    rng = random.Random(f"lethe-prefix|{salt}")
    rows = ([], [], [], [])
    for _ in range(count):
        i = rng.randrange(len(target))
        prefix = " ".join(rng.sample(pool, rng.randint(*PREFIX_WORDS)))
        for column, value in zip(
            rows, (f"{prefix} {target[i]}", f"{prefix} {anchor[i]}", target_words[i], anchor_words[i])
        ):
            column.append(value)
    return rows


def with_prefixes(prompts: RequestPrompts, tokenizer, count: int, *, seed: int = 0) -> RequestPrompts:
    """`prompts` with `count` prefixed pairs (`prefixed_pairs`) added to the target's pairs and to every
    earlier concept's, the prefixes drawn from the method's half of the vocabulary (the sweep and the
    attack judge on all of it, so the check still sees words the edit never paired)."""
    if not count:
        return prompts
    words = vocabulary_words(tokenizer, part="method")
    return _with_more_pairs(prompts, lambda *columns, salt: prefixed_pairs(*columns, words, count, salt=salt), seed)


def _with_more_pairs(prompts: RequestPrompts, more, seed: int) -> RequestPrompts:
    """`prompts` with the rows `more(target, anchor, target_words, anchor_words, salt=…)` makes of each concept's
    pairs added to them: the target's (salt "<seed>|target") and every earlier concept's ("<seed>|<concept>")."""

    def extended(pairs, salt: str):  # a RequestPrompts or a ConceptPairs: both hold the four pair columns
        extra = more(*(getattr(pairs, f) for f in PAIR_COLUMNS), salt=salt)
        return replace(pairs, **{f: getattr(pairs, f) + added for f, added in zip(PAIR_COLUMNS, extra)})

    earlier = tuple(extended(pairs, f"{seed}|{pairs.concept}") for pairs in prompts.earlier)
    return replace(extended(prompts, f"{seed}|target"), earlier=earlier)


def variant_pairs(
    target: list[str], anchor: list[str], target_words: list[str], anchor_words: list[str], count: int, *, salt: str
) -> tuple[list[str], list[str], list[str], list[str]]:
    """`count` more target/anchor pairs: a pair of the given ones (drawn at random) whose target word is one of
    its rule-made variants from the method's half (`name_variants(part="method")`: "circel", "d-i-s-c",
    "DISC"), the anchor prompt unchanged ("a drawing of one circel" with "a drawing of one square"). Why: the
    sweep asks whether the candidate draws an erased concept on the variants a user might type instead
    (`part="sweep"`, the other half), and an edit solved on the name alone leaves some of them drawing it
    (circle's leak 132–143 of 154 where 139 passes, bench/RESULTS.md 2026-12-07). The variants paired here are
    never the ones judged."""
    rows = ([], [], [], [])
    choices = [(i, v) for i, word in enumerate(target_words) for v in name_variants(word, part="method")]
    if not count or not choices:
        return rows
    rng = random.Random(f"lethe-variant|{salt}")
    for _ in range(count):
        i, variant = rng.choice(choices)
        for column, value in zip(
            rows, (replace_word(target[i], target_words[i], variant), anchor[i], variant, anchor_words[i])
        ):
            column.append(value)
    return rows


def with_variants(prompts: RequestPrompts, count: int, *, seed: int = 0) -> RequestPrompts:
    """`prompts` with `count` variant pairs (`variant_pairs`) added to the target's pairs and to every earlier
    concept's, as `with_prefixes` adds prefixed ones."""
    if not count:
        return prompts
    return _with_more_pairs(prompts, lambda *columns, salt: variant_pairs(*columns, count, salt=salt), seed)
