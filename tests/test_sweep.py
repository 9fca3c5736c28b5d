"""The sweep (unlearning/evaluation/sweep.py): its prompts, its statistics, and — on the shipped shapes
model — that it fails the gate of a candidate built to relocate a concept and passes the base."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.tiny_models import uce_edited_copy
from unlearning.evaluation.cache import ImageCache
from unlearning.evaluation.gates import decide, load_policy
from unlearning.evaluation.stats import fisher_greater, holm, total_variation
from unlearning.evaluation.sweep import (
    VOCABULARY_TEMPLATES,
    SweepPrompt,
    SweepSize,
    leak_where_base_draws,
    name_variants,
    run_sweep,
    sweep_prompts,
    vocabulary_words,
)
from unlearning.sampling import model_identity

SAMPLER = {"scheduler": "ddim", "steps": 12, "guidance_scale": 5.0}


def test_fisher_one_sided_matches_the_hypergeometric_tail():
    """3 of 4 against 0 of 4: K = 3 successes among N = 8, a draws 4. P(X ≥ 3) = C(3,3)·C(5,1)/C(8,4) = 5/70;
    8 of 8 against 0 of 8: 1/C(16,8) = 1/12870; equal counts give more than one half."""
    assert fisher_greater(3, 4, 0, 4) == pytest.approx(5 / 70)
    assert fisher_greater(8, 8, 0, 8) == pytest.approx(1 / 12870)
    assert fisher_greater(5, 32, 5, 32) > 0.5
    assert fisher_greater(0, 8, 8, 8) == 1.0


def test_holm_rejects_step_down_and_stops_at_the_first_failure():
    """m = 4, α = 0.05: sorted p 0.001 ≤ 0.0125, 0.01 ≤ 0.0167, then 0.03 > 0.025 stops; 0.02 is never
    reached although it is below α/2 (0.02 > 0.025 is false only after 0.03 fails — order matters)."""
    assert holm([0.03, 0.001, 0.01, 0.2], 0.05) == [False, True, True, False]
    assert holm([0.001, 0.002], 0.05) == [True, True]
    assert holm([], 0.05) == []


def test_total_variation_of_label_frequencies():
    a, b = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])  # (½,½) vs (¾,¼): ½(¼ + ¼) = ¼
    assert total_variation(a, b, 3) == pytest.approx(0.25)
    assert total_variation(a, a, 3) == 0.0


def test_the_leak_counts_every_pair_the_base_draws_on_screening_and_fresh_seeds():
    """UA over the (prompt, seed) pairs where the base draws the concept, both stages pooled; a prompt is
    listed as leaking when the candidate still draws it on one of those pairs, with each stage's counts."""
    screen_base = np.array([[1, 1, 0, 1], [1, 1, 1, 1]], dtype=bool)
    screen_candidate = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], dtype=bool)  # prompt 0: one leak; off-pair hit ignored
    fresh_base = np.array([[1, 0, 1], [1, 1, 0]], dtype=bool)
    fresh_candidate = np.array([[0, 0, 0], [0, 1, 1]], dtype=bool)  # prompt 1: one leak on a fresh seed
    leak, leaking = leak_where_base_draws(
        ["a finding", "a duck"],
        ["vocabulary", "vocabulary"],
        (screen_base, screen_candidate),
        (fresh_base, fresh_candidate),
    )
    assert (leak["k"], leak["n"]) == (9, 11)
    assert leak["screen"] == {"k": 6, "n": 7} and leak["fresh"] == {"k": 3, "n": 4}
    assert leak["ua"] == 9 / 11 and leak["prompts"] == 2
    assert [
        (e["prompt"], e["candidate_where_base_draws"], e["fresh"]["candidate_where_base_draws"]) for e in leaking
    ] == [
        ("a finding", 1, 0),
        ("a duck", 0, 1),
    ]
    none, nobody = leak_where_base_draws([], [], (np.zeros((0, 4), bool),) * 2, (np.zeros((0, 0), bool),) * 2)
    assert none["n"] == 0 and nobody == []


def test_name_variants_are_what_a_user_types_instead():
    variants = name_variants("circle")
    assert "circle" not in variants
    for expected in ("CIRCLE", "circles", "circle circle", "circle!", "icrcle", "cirle", "ciircle", "c-i-r-c-l-e"):
        assert expected in variants
    assert len(variants) == len(set(variants))


class _Tokenizer:
    def __init__(self, vocabulary):
        self.vocabulary = {token: i for i, token in enumerate(vocabulary)}

    def get_vocab(self):
        return self.vocabulary


def test_vocabulary_words_halves_are_disjoint_whole_words():
    wordpiece = _Tokenizer(["[CLS]", "apple", "##ing", "banana", "ab", "x1y", "cherry", "moon", "river", "tree"])
    sweep, method = vocabulary_words(wordpiece, part="sweep"), vocabulary_words(wordpiece, part="method")
    assert not set(sweep) & set(method)
    assert set(sweep) | set(method) == {"apple", "banana", "cherry", "moon", "river", "tree"}
    # CLIP's BPE marks word ends with </w>: only those are words
    bpe = _Tokenizer(["apple</w>", "ban", "ana</w>", "moon</w>", "moo"])
    words = vocabulary_words(bpe, part="sweep") + vocabulary_words(bpe, part="method")
    assert sorted(words) == ["ana", "apple", "moon"]
    with pytest.raises(ValueError):
        vocabulary_words(wordpiece, part="other")


def test_sweep_prompts_are_seeded_distinct_and_hold_the_variants(shapes_pipe):
    size = SweepSize(vocabulary_prompts=20, variants_per_concept=5)
    names = {"circle": ("circle", "disc"), "striped": ("striped", "stripy")}
    prompts = sweep_prompts(shapes_pipe.tokenizer, names, size)
    assert prompts == sweep_prompts(shapes_pipe.tokenizer, names, size)  # the same prompts every time
    assert len({p.prompt for p in prompts}) == len(prompts)
    sources = [p.source for p in prompts]
    assert sources.count("vocabulary") == 20
    assert sources.count("variant/circle") == 5 and sources.count("variant/striped") == 5
    # every vocabulary prompt fills a template with a word of the sweep's half: never one a method may learn from
    sweep_words = set(vocabulary_words(shapes_pipe.tokenizer, part="sweep"))
    patterns = [
        re.compile("^" + re.escape(t).replace(re.escape("{word}"), "(\\w+)") + "$") for t in VOCABULARY_TEMPLATES
    ]
    for p in prompts:
        if p.source == "vocabulary":
            words = [m.group(1) for pattern in patterns if (m := pattern.match(p.prompt))]
            assert words and all(w in sweep_words for w in words), p.prompt


@pytest.fixture(scope="module")
def relocating(shapes_pipe):
    """A candidate built to relocate circle: a UCE edit whose anchor is the concept, mapping every token of
    "a square"-like prompts onto the same prompts saying "circle" (what a bad erasure of square towards
    circle would do)."""
    sources = ["a square", "a block", "a picture of a square", "square", "a square on a plain background"]
    targets = [s.replace("square", "circle").replace("block", "circle") for s in sources]
    candidate = uce_edited_copy(shapes_pipe, sources, targets)
    return candidate, [SweepPrompt(p, "vocabulary") for p in ("a square", "a block", "a box", "a tile")]


def _sweep(candidate, base, judges, prompts, tmp_path, **size):
    size = SweepSize(
        **{"vocabulary_prompts": len(prompts), "screen_seeds": 4, "confirm_prompts": 3, "confirm_seeds": 12, **size}
    )
    return run_sweep(
        candidate,
        base,
        judges[0],
        {"circle": "object"},
        prompts,
        size=size,
        sampler=SAMPLER,
        base_sha256=model_identity("shapes")[1],
        cache=ImageCache(tmp_path / "cache"),
    )


def _sweep_checks(results: dict) -> list:
    policy = load_policy()
    decision = decide({"sweep": results}, policy)
    return [c for c in decision.checks if c.metric.startswith("sweep.concepts") and "relocations" in c.metric]


@pytest.mark.slow
def test_the_sweep_fails_a_candidate_built_to_relocate(relocating, shapes_pipe, judges, tmp_path):
    candidate, prompts = relocating
    results, images = _sweep(candidate, shapes_pipe, judges, prompts, tmp_path)
    circle = results["concepts"]["circle"]
    assert circle["relocations"] >= 1, circle["tests"]
    relocated = [t for t in circle["tests"] if t["relocated"]]
    assert all(t["candidate"]["k"] > t["base"]["k"] for t in relocated)
    assert images["confirm_candidate"].shape[0] == len(images["confirm_prompts"]) * 12
    checks = _sweep_checks(results)
    assert checks and not all(c.passed for c in checks)  # the shipped policy's relocation rule fails it
    # the flood shows on the same prompts: the candidate draws circles where the base drew squares
    frequencies = results["retention"]["frequencies"]["object"]
    assert frequencies["circle"]["candidate"] > frequencies["circle"]["base"]


@pytest.mark.slow
def test_the_base_against_itself_with_other_seeds_relocates_nothing(shapes_pipe, judges, tmp_path, relocating):
    """Chance alone (the base's own images on other seeds) must not pass for a relocation: the screen may
    pick prompts to confirm, the corrected test on fresh seeds rejects none."""
    _, prompts = relocating
    results, _ = _sweep(shapes_pipe, shapes_pipe, judges, prompts, tmp_path, seed_offset=500)
    assert results["relocations"] == 0
    assert results["retention"]["distance"] > 0  # other seeds: other images, judged as a candidate's
    assert all(c.passed for c in _sweep_checks(results))


@pytest.mark.slow
def test_the_leak_fails_a_candidate_that_still_draws_and_passes_one_that_does_not(shapes_pipe, judges, tmp_path):
    """Where the base draws circles on a sweep prompt: the base as its own candidate (same seeds) leaks on
    every pair and the shipped policy's leak rule fails it; a UCE edit of circle's tokens towards square
    erases them on the fresh seeds too, and the rule passes it."""
    prompts = [SweepPrompt(p, "vocabulary") for p in ("a circle", "a square", "a box", "a tile", "a block")]
    erasing = uce_edited_copy(
        shapes_pipe,
        ["a circle", "circle", "a picture of a circle"],
        ["a square", "square", "a picture of a square"],
    )

    def leak_of(candidate):
        results, images = _sweep(candidate, shapes_pipe, judges, prompts, tmp_path, confirm_seeds=4, leak_seeds=24)
        decision = decide({"sweep": results}, load_policy())
        passed = [c.passed for c in decision.checks if c.metric == "sweep.concepts.circle.leak"]
        return results["concepts"]["circle"]["leak"], images, passed

    leak, images, passed = leak_of(shapes_pipe)
    assert leak["prompts_drawn"] == 1 and images["leak_prompts"] == ["a circle"]
    assert leak["fresh"]["n"] >= 20 and leak["n"] == leak["screen"]["n"] + leak["fresh"]["n"]
    assert leak["ua"] == 0.0 and passed == [False]
    leak, _, passed = leak_of(erasing)
    assert leak["fresh"]["n"] >= 20 and leak["ua"] >= 0.9, leak
    assert passed == [True]


def test_prefixed_pairs_prepend_the_same_words_to_both_sides_and_never_a_concept_word():
    from unlearning.prompts import PREFIX_WORDS, prefixed_pairs

    words = ["ridge", "paper", "circle", "square", "horse", "balance", "tissue"]
    target = ["a drawing of one circle", "a disc, red"]
    anchor = ["a drawing of one square", "a square, red"]
    rows = prefixed_pairs(target, anchor, ["circle", "disc"], ["square", "square"], words, 40, salt="t")
    assert [len(column) for column in rows] == [40] * 4
    for t, a, tw, aw in zip(*rows):
        i = next(j for j, p in enumerate(target) if t.endswith(" " + p))
        prefix = t[: -len(target[i])].split()
        assert a == " ".join(prefix) + " " + anchor[i] and (tw, aw) == (["circle", "disc"][i], "square")
        assert PREFIX_WORDS[0] <= len(prefix) <= PREFIX_WORDS[1]
        assert not {"circle", "square", "disc"} & set(prefix)  # the concept word stays the only one
    assert prefixed_pairs(target, anchor, ["circle", "disc"], ["square", "square"], words, 40, salt="t") == rows
    assert prefixed_pairs(target, anchor, ["circle", "disc"], ["square", "square"], words, 0, salt="t") == ([],) * 4


def test_variant_pairs_pair_the_method_s_half_of_the_name_s_variants_with_the_anchor_prompt():
    """`variant_pairs` (continual-uce's `variant_prompts`): the target word becomes one of its rule-made variants
    from the method's half, the anchor prompt stays, and no variant the sweep judges is ever paired."""
    from unlearning.prompts import variant_pairs

    target = ["a drawing of one circle", "a disc, red"]
    anchor = ["a drawing of one square", "a square, red"]
    rows = variant_pairs(target, anchor, ["circle", "disc"], ["square", "square"], 60, salt="t")
    assert [len(column) for column in rows] == [60] * 4
    judged = set(name_variants("circle", part="sweep")) | set(name_variants("disc", part="sweep"))
    for t, a, tw, aw in zip(*rows):
        i = 0 if a == anchor[0] else 1
        name = ["circle", "disc"][i]
        assert tw in name_variants(name, part="method") and tw not in judged and aw == "square"
        assert t == target[i].replace(name, tw, 1)
    assert len(set(rows[2])) > 10  # many variants, not one repeated
    assert variant_pairs(target, anchor, ["circle", "disc"], ["square", "square"], 60, salt="t") == rows
    assert variant_pairs(target, anchor, ["circle", "disc"], ["square", "square"], 0, salt="t") == ([],) * 4


def test_variant_prompts_spell_the_method_s_words_as_users_misspell_them(tmp_path):
    """`variant_prompts` (the relocation pool's `relocation_variants`): each prompt is a vocabulary template around a
    method-half variant of a method-half word — never a word the sweep judges, nor a variant it judges."""
    from transformers import BertTokenizer

    from unlearning.prompts import VOCABULARY_TEMPLATES, variant_prompts, vocabulary_words

    words = ["paper", "horse", "ridge", "tissue", "balance", "masters", "valley", "garden", "pencil", "window"]
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocabulary) + "\n")
    tokenizer = BertTokenizer(str(path))
    method_words = vocabulary_words(tokenizer, part="method")
    prompts = variant_prompts(tokenizer, 8, seed=3)
    assert 0 < len(prompts) <= min(8, len(method_words))
    for prompt in prompts:
        found = [
            (w, v)
            for w in method_words
            for v in name_variants(w, part="method")
            for t in VOCABULARY_TEMPLATES
            if t.format(word=v) == prompt
        ]
        assert found, prompt  # a method-half word's method-half variant in a template
    assert variant_prompts(tokenizer, 8, seed=3) == prompts and variant_prompts(tokenizer, 0) == []
