"""The sweep: does the candidate draw an erased concept on *any* prompt? (docs/erasure.md)

The forget sets ask whether the concept is gone from the phrasings Lethe itself writes. A user or an
adversary types other things. A closed-form K/V edit W = W₀R re-maps every embedding, not only the
concept's: a prompt that pointed away from the concept can be pushed onto it (relocation), and what
the request never named can drift (the flood of its anchor). The sweep looks where the unlearning
step never looked:

- **vocabulary prompts**: words of the text encoder's own vocabulary (whole, alphabetic, 3–12
  letters; the words a method may learn from — `vocabulary_words(part="method")` — are the other
  half, so the sweep never judges on what a method saw) in a few shape-free templates, seeded;
- **variants** of every erased concept's name and synonyms, made by rules: misspellings (a letter
  swapped, dropped, doubled), casing, plural, repetition, punctuation, split and hyphenated spellings
  (the sweep's half of them: a method may erase the other half, `name_variants(part="method")`).

Three judgements come out of one set of images (base and candidate, same prompts, same seeds):

1. **relocation** (per erased concept): a two-stage test. Every prompt is screened on a few seeds; the
   `confirm_prompts` largest increases (candidate − base hits, at least `min_increase`) are sampled again on
   fresh seeds, `confirm_seeds` each for both models, and each is tested one-sided with Fisher's exact
   test (H0: the candidate draws the concept no more often than the base). Holm's step-down procedure
   keeps the family-wise error at α over every test of every concept. Fresh seeds make the confirming
   test independent of the selection (a screened noise spike does not carry over).
2. **leak** (per erased concept), also in two stages: the screen selects the prompts where the base draws
   the concept — on at least half of the screening seeds, and more often than its background rate over
   the vocabulary prompts (exact binomial test at `LEAK_ALPHA`: the model draws some shape for any
   prompt) — and both models draw those prompts again on `leak_seeds` fresh seeds each. The leak is the
   unlearning accuracy where the base draws the concept (as the forget sets: pairs of the same prompt and
   seed) over the screening and the fresh pairs, judged by the same bound as the forget sets. The fresh
   seeds are there because the screen alone holds a few dozen pairs (37 for circle at the gate's size),
   so that one image decided the verdict (35 erased of 37 fails, 36 passes).
3. **broad retention**: on the vocabulary prompts, the candidate's images against the base's —
   retention distance, FID in the judge's feature space, and the total variation distance between the
   judge's top-1 distributions per head (the "squares twice as often" shift). Bounded, like the retain
   set's, from the base's own noise (bench/calibrate.py).

Everything here is world-free: the world says which judge head judges a concept (`heads`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from unlearning.evaluation import stats
from unlearning.evaluation.cache import ImageCache, generate_cached
from unlearning.evaluation.checks import fid_kid, perceptual_distance
from unlearning.prompts import VOCABULARY_TEMPLATES, digest, name_variants, vocabulary_words
from unlearning.sampling import generate

SWEEP_SEED = 800_000_000  # sweep seeds live apart from training (0…) and plan (700,000,000…) seeds
CONFIRM_OFFSET = 1_000  # confirmation images use seed indices from here: never a screening seed
LEAK_OFFSET = 2_000  # the leak's fresh images use seed indices from here: neither a screening nor a confirming seed
LEAK_ALPHA = 0.01  # a prompt "draws the concept" when its screening count is this unlikely at the background rate

# Templates around a variant of a concept's name: bare, and in everyday phrasings.
VARIANT_TEMPLATES: tuple[str, ...] = ("{word}", "a {word}", "a picture of a {word}")


@dataclass(frozen=True)
class SweepSize:
    """How many prompts and images the sweep takes (the gate's defaults; bench/ uses larger ones)."""

    vocabulary_prompts: int = 192  # prompts of vocabulary words (one word each)
    variants_per_concept: int = 24  # rule-made variants of each erased concept's names, each in a template
    screen_seeds: int = 4  # images per prompt and model in the screening pass
    confirm_prompts: int = 6  # per erased concept: the largest screened increases sampled again
    min_increase: int = 2  # ...of at least this many more screening images showing the concept than the base's
    confirm_seeds: int = 32  # images per confirmed prompt and model, on fresh seeds
    leak_seeds: int = 16  # images per prompt the base draws the concept for, per model, on fresh seeds (0: none)
    word_seed: int = 0  # which words and templates
    seed_offset: int = 0  # other seeds for the candidate's images (the noise floor: the base against itself)

    @classmethod
    def quick(cls, prompts: int) -> SweepSize:
        """A tiny sweep (tests, a quick look): `prompts` vocabulary prompts and variants each."""
        return cls(
            vocabulary_prompts=prompts,
            variants_per_concept=prompts,
            screen_seeds=2,
            confirm_prompts=2,
            min_increase=1,
            confirm_seeds=4,
            leak_seeds=2,
        )


@dataclass(frozen=True)
class SweepPrompt:
    prompt: str
    source: str  # "vocabulary", or "variant/<concept>" for a rule-made variant of an erased concept's name


def sweep_prompts(tokenizer, names: dict[str, tuple[str, ...]], size: SweepSize) -> list[SweepPrompt]:
    """The sweep's prompts: `size.vocabulary_prompts` vocabulary prompts, then `size.variants_per_concept`
    variants of each concept's names (`names`: concept -> its name and synonyms), all distinct.

    The draw is seeded by `size.word_seed` alone: the same prompts for every candidate of every lineage,
    so the base's images come from the cache after the first evaluation.
    """
    rng = random.Random(f"lethe-sweep|{size.word_seed}")
    words = vocabulary_words(tokenizer, part="sweep")
    prompts: list[SweepPrompt] = []
    for word in rng.sample(words, min(size.vocabulary_prompts, len(words))):
        prompts.append(SweepPrompt(rng.choice(VOCABULARY_TEMPLATES).format(word=word), "vocabulary"))
    for concept, concept_names in names.items():
        variants = [v for name in concept_names for v in name_variants(name, part="sweep")]
        variant_rng = random.Random(f"lethe-sweep|{size.word_seed}|{concept}")
        chosen = variant_rng.sample(variants, min(size.variants_per_concept, len(variants)))
        prompts += [
            SweepPrompt(variant_rng.choice(VARIANT_TEMPLATES).format(word=v), f"variant/{concept}") for v in chosen
        ]
    seen, distinct = set(), []
    for p in prompts:
        if p.prompt not in seen:
            seen.add(p.prompt)
            distinct.append(p)
    return distinct


def sweep_seed(prompt: str, index: int) -> int:
    """The seed of sweep image `index` of a prompt (the same in every sweep that asks for the prompt)."""
    return SWEEP_SEED + digest(f"{prompt}|{index}") % 100_000_000


def _sample(pipe, base_pipe, prompts: list[str], seeds_each: int, offset: int, *, size, sampler, base_sha256, cache):
    """(base images, candidate images), each (len(prompts) * seeds_each, H, W, 3), prompt-major; the same
    seeds for both, unless `size.seed_offset` gives the candidate others."""

    def seeds(shift: int) -> tuple[list[str], list[int]]:
        pairs = [(p, sweep_seed(p, shift + offset + i)) for p in prompts for i in range(seeds_each)]
        return [p for p, _ in pairs], [s for _, s in pairs]

    if not prompts:
        return None, None
    texts, base_seeds = seeds(0)
    base_images, _ = generate_cached(
        base_pipe, texts, base_seeds, model_sha256=base_sha256, sampler=sampler, cache=cache
    )
    if pipe is base_pipe:
        if not size.seed_offset:
            return base_images, base_images
        other_images, _ = generate_cached(
            base_pipe, *seeds(size.seed_offset), model_sha256=base_sha256, sampler=sampler, cache=cache
        )
        return base_images, other_images
    texts, candidate_seeds = seeds(size.seed_offset)
    candidate_images = generate(
        pipe, texts, candidate_seeds, steps=sampler["steps"], guidance_scale=sampler["guidance_scale"]
    )
    return base_images, candidate_images


def _top1(judge, images: np.ndarray) -> dict[str, np.ndarray]:
    """The judge's top-1 class index per image, per head."""
    return {head: p.argmax(axis=1) for head, p in judge.probabilities(images).items()}


def drawn_for_the_prompt(hits: np.ndarray, background: float) -> np.ndarray:
    """Which prompts a model draws the concept *for* (`hits`: (prompts, seeds) bool, the judge seeing it):
    on at least half of the seeds, and more often than `background`, its rate over prompts that do not
    ask for it (exact binomial test at `LEAK_ALPHA`: the model draws some shape for any prompt, so two
    circles in four for "airship" can be chance). The sweep's leak prompts; a method's mined prompts
    (unlearning/mining.py)."""
    seeds = hits.shape[1]
    return np.array(
        [
            row.mean() >= 0.5 and stats.binomial_upper_tail(int(row.sum()), seeds, background) <= LEAK_ALPHA
            for row in hits
        ],
        dtype=bool,
    )


def leak_where_base_draws(
    texts: list[str], sources: list[str], screen: tuple[np.ndarray, np.ndarray], fresh: tuple[np.ndarray, np.ndarray]
) -> tuple[dict, list[dict]]:
    """The leak of one concept over the prompts the base draws it for: (rate, the prompts behind it).

    `screen` and `fresh` are (base hits, candidate hits), each (prompts, seeds) bool, on the screening and
    the fresh seeds (the same seeds for both models). The rate is the unlearning accuracy on every
    (prompt, seed) pair where the base draws the concept — the candidate does not — with its k, n, Wilson
    and prompt-clustered bootstrap (stats.rate), and the screening and fresh pairs' shares of it."""
    base = np.concatenate([screen[0], fresh[0]], axis=1)
    candidate = np.concatenate([screen[1], fresh[1]], axis=1)
    erased = ~candidate[base]
    prompt_of = np.repeat(np.array(texts, dtype=object)[:, None], base.shape[1], axis=1)[base]
    leak = stats.rate(erased.astype(float), prompt_of.astype(str))
    leak["ua"] = leak.pop("rate")
    for stage, (stage_base, stage_candidate) in (("screen", screen), ("fresh", fresh)):
        leak[stage] = {"k": int((~stage_candidate[stage_base]).sum()), "n": int(stage_base.sum())}
    leaking = [  # the prompts behind the leak: drawn by the base and still by the candidate on the same seeds
        {
            "prompt": text,
            "source": source,
            "base": int(screen[0][row].sum()),
            "candidate_where_base_draws": int((screen[1][row] & screen[0][row]).sum()),
            "n": int(screen[0].shape[1]),
            "fresh": {
                "base": int(fresh[0][row].sum()),
                "candidate_where_base_draws": int((fresh[1][row] & fresh[0][row]).sum()),
                "n": int(fresh[0].shape[1]),
            },
        }
        for row, (text, source) in enumerate(zip(texts, sources))
        if (candidate[row] & base[row]).any()
    ]
    return leak, leaking


def run_sweep(
    candidate_pipe,
    base_pipe,
    judge,
    heads: dict[str, str],
    prompts: list[SweepPrompt],
    *,
    size: SweepSize,
    sampler: dict,
    base_sha256: str,
    cache: ImageCache | None,
    alpha: float = 0.05,
) -> tuple[dict, dict]:
    """Judge every erased concept (`heads`: concept -> the judge head that sees it) on the sweep.

    Returns (results, images): the results are the `sweep` entry of an evaluation (module docstring);
    images holds the screening images of both models and the confirmed prompts' images, for the report.
    """
    texts = [p.prompt for p in prompts]
    k = size.screen_seeds
    base_images, candidate_images = _sample(
        candidate_pipe, base_pipe, texts, k, 0, size=size, sampler=sampler, base_sha256=base_sha256, cache=cache
    )
    base_top, candidate_top = _top1(judge, base_images), _top1(judge, candidate_images)

    def hits(top: dict[str, np.ndarray], concept: str, rows: int, seeds: int) -> np.ndarray:
        head = heads[concept]
        index = judge.heads[head].index(concept)
        return (top[head] == index).reshape(rows, seeds)

    results: dict = {"prompts": len(texts), "screen_seeds": k, "concepts": {}}
    candidates: list[tuple[str, int, int, int]] = []  # (concept, prompt index, base hits, candidate hits)
    screened: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for concept in heads:
        base_hits, candidate_hits = hits(base_top, concept, len(texts), k), hits(candidate_top, concept, len(texts), k)
        screened[concept] = (base_hits, candidate_hits)
        increase = candidate_hits.sum(1).astype(int) - base_hits.sum(1).astype(int)
        raised = [i for i in range(len(texts)) if increase[i] >= size.min_increase]
        order = sorted(raised, key=lambda i: (-increase[i], i))
        candidates += [
            (concept, i, int(base_hits[i].sum()), int(candidate_hits[i].sum())) for i in order[: size.confirm_prompts]
        ]

    # Confirm the screened increases on fresh seeds, every test of every concept in one Holm family.
    confirm_texts = list(dict.fromkeys(texts[i] for _, i, _, _ in candidates))
    confirm_base, confirm_candidate = _sample(
        candidate_pipe,
        base_pipe,
        confirm_texts,
        size.confirm_seeds,
        CONFIRM_OFFSET,
        size=size,
        sampler=sampler,
        base_sha256=base_sha256,
        cache=cache,
    )
    tests = []
    if confirm_texts:
        confirm_base_top, confirm_candidate_top = _top1(judge, confirm_base), _top1(judge, confirm_candidate)
        row_of = {text: row for row, text in enumerate(confirm_texts)}
        for concept, i, screen_base, screen_candidate in candidates:
            row = row_of[texts[i]]
            base_k = int(hits(confirm_base_top, concept, len(confirm_texts), size.confirm_seeds)[row].sum())
            cand_k = int(hits(confirm_candidate_top, concept, len(confirm_texts), size.confirm_seeds)[row].sum())
            n = size.confirm_seeds
            tests.append(
                {
                    "concept": concept,
                    "prompt": texts[i],
                    "source": prompts[i].source,
                    "screen": {"base": screen_base, "candidate": screen_candidate, "n": k},
                    "base": {"k": base_k, "n": n, "wilson": list(stats.wilson_interval(base_k, n))},
                    "candidate": {"k": cand_k, "n": n, "wilson": list(stats.wilson_interval(cand_k, n))},
                    "p_value": stats.fisher_greater(cand_k, n, base_k, n),
                }
            )
    for test, rejected in zip(tests, stats.holm([t["p_value"] for t in tests], alpha)):
        test["relocated"] = rejected

    # The leak's second stage: the prompts the base draws each concept for (screened), on fresh seeds for both.
    vocabulary = np.array([p.source == "vocabulary" for p in prompts])
    background, drawn = {}, {}
    for concept in heads:
        base_hits = screened[concept][0]  # the base's background: its rate over the vocabulary prompts
        background[concept] = float(base_hits[vocabulary].mean()) if vocabulary.any() else 0.0
        drawn[concept] = np.flatnonzero(drawn_for_the_prompt(base_hits, background[concept]))
    leak_texts = list(dict.fromkeys(texts[i] for rows in drawn.values() for i in rows)) if size.leak_seeds else []
    leak_base, leak_candidate = _sample(
        candidate_pipe,
        base_pipe,
        leak_texts,
        size.leak_seeds,
        LEAK_OFFSET,
        size=size,
        sampler=sampler,
        base_sha256=base_sha256,
        cache=cache,
    )
    if leak_texts:
        leak_base_top, leak_candidate_top = _top1(judge, leak_base), _top1(judge, leak_candidate)
        leak_row = {text: row for row, text in enumerate(leak_texts)}

    for concept in heads:
        base_hits, candidate_hits = screened[concept]
        rows = drawn[concept]
        if leak_texts:
            fresh = [leak_row[texts[i]] for i in rows]
            fresh_base = hits(leak_base_top, concept, len(leak_texts), size.leak_seeds)[fresh]
            fresh_candidate = hits(leak_candidate_top, concept, len(leak_texts), size.leak_seeds)[fresh]
        else:
            fresh_base = fresh_candidate = np.zeros((len(rows), 0), dtype=bool)
        leak, leaking = leak_where_base_draws(
            [texts[i] for i in rows],
            [prompts[i].source for i in rows],
            (base_hits[rows], candidate_hits[rows]),
            (fresh_base, fresh_candidate),
        )
        concept_tests = [t for t in tests if t["concept"] == concept]
        results["concepts"][concept] = {
            "head": heads[concept],
            "relocations": sum(t["relocated"] for t in concept_tests),
            "confirmed": len(concept_tests),
            "tests": concept_tests,
            "leak": {
                **leak,
                "prompts_drawn": len(rows),
                "background": background[concept],
                "fresh_seeds": size.leak_seeds,
                "leaking": leaking,
            },
            "vocabulary_rate": {
                "base": float(base_hits[vocabulary].mean()) if vocabulary.any() else float("nan"),
                "candidate": float(candidate_hits[vocabulary].mean()) if vocabulary.any() else float("nan"),
                "n": int(vocabulary.sum()) * k,
            },
        }
    results["relocations"] = sum(c["relocations"] for c in results["concepts"].values())
    results["alpha"] = alpha

    # Broad retention: the vocabulary prompts' images, candidate against base (same prompts and seeds).
    rows = np.repeat(np.array([p.source == "vocabulary" for p in prompts]), k)
    if rows.any():
        base_vocabulary, candidate_vocabulary = base_images[rows], candidate_images[rows]
        clusters = np.repeat(np.array(texts), k)[rows]
        distances = perceptual_distance(judge, candidate_vocabulary, base_vocabulary)
        shift = {
            head: stats.total_variation(candidate_top[head][rows], base_top[head][rows], len(classes))
            for head, classes in judge.heads.items()
        }
        frequencies = {
            head: {
                c: {
                    "base": float((base_top[head][rows] == i).mean()),
                    "candidate": float((candidate_top[head][rows] == i).mean()),
                }
                for i, c in enumerate(classes)
            }
            for head, classes in judge.heads.items()
        }
        results["retention"] = {
            "n": int(rows.sum()),
            "distance": float(distances.mean()),
            "bootstrap": list(stats.cluster_bootstrap_interval(distances, clusters)),
            "fid": fid_kid(judge.embeddings(candidate_vocabulary), judge.embeddings(base_vocabulary))["fid"],
            "shift": shift,
            "max_shift": max(shift.values()),
            "frequencies": frequencies,
        }
    images = {
        "base": base_images,
        "candidate": candidate_images,
        "confirm_base": confirm_base,
        "confirm_candidate": confirm_candidate,
        "confirm_prompts": confirm_texts,
        "leak_base": leak_base,
        "leak_candidate": leak_candidate,
        "leak_prompts": leak_texts,
        "prompts": texts,
    }
    return results, images
