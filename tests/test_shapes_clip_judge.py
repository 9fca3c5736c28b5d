"""The shapes world's CLIP-format judge (unlearning/shapes/clip_judge.py): the shipped weights load through
the open world's `ClipJudge` and name fresh degraded renders; its tokenizer and preprocessing are those it
was trained with; the recipe is seeded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unlearning.evaluation.clip_judge import ClipJudge
from unlearning.shapes.clip_judge import (
    JUDGED,
    WEIGHTS_DIR,
    ClipJudgeConfig,
    degraded_renders,
    judge_words,
    train_clip_judge,
)
from unlearning.shapes.detector import to_model_input

HEADS = JUDGED  # the world's objects (styles), then the open world's distractors


@pytest.fixture(scope="module")
def shipped():
    return ClipJudge.load(str(WEIGHTS_DIR), HEADS)


def test_the_shipped_judge_names_fresh_degraded_renders(shipped):
    """64 renders no training step drew (another seed), every one degraded like a generated image, judged
    zero-shot over the world's classes and the open world's distractors (18 and 14 classes): the object and the
    style are the top-1 on at least 60 of 64 each. Measured at shipping on these renders: 64 and 64
    (training.json `zero_shot_top1`, 480 others: 0.994 and 0.983). The judge of 4,000 steps it replaced got
    44 and 63 here."""
    images, scenes = degraded_renders(64, 424_242, 0, torch.Generator().manual_seed(424_242), rate=1.0)
    probs = shipped.probabilities(images)
    for head, at_least in (("object", 60), ("style", 60)):
        named = [HEADS[head][k] for k in probs[head].argmax(axis=1)]
        right = sum(n == getattr(s, head) for n, s in zip(named, scenes))
        assert right >= at_least, f"{head}: {right}/64"


def test_the_judge_sees_what_training_saw(shipped):
    """The processor's resize, crop and normalisation of a 32 px uint8 image are the identity and x / 127.5 - 1:
    the detector's range, which training fed the vision tower."""
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    torch.testing.assert_close(shipped._pixels(images), to_model_input(torch.from_numpy(images)), atol=1e-6, rtol=0)


def test_the_shipped_tokenizer_is_word_level_bpe_with_a_character_fallback(shipped):
    tokenizer = shipped.processor.tokenizer
    assert all(tokenizer.tokenize(w) == [w + "</w>"] for w in judge_words())
    assert tokenizer.tokenize("a polka-dot zebra") == ["a</w>", "polka</w>", "-</w>", "dot</w>", *"zebr", "a</w>"]


def test_the_shipped_folder_is_small_and_says_how_it_was_made():
    assert sum(f.stat().st_size for f in WEIGHTS_DIR.iterdir()) < 10 * 2**20
    record = json.loads((WEIGHTS_DIR / "training.json").read_text())
    assert record["command"].startswith("python -m unlearning.shapes.clip_judge")
    assert record["config"]["seed"] == 0 and record["zero_shot_top1"]["degraded"]["style"] >= 0.9


@pytest.mark.slow
def test_the_recipe_is_seeded_and_its_folder_loads_as_a_judge(tmp_path):
    """Two runs of a tiny configuration give the same weights; the folder is a CLIP `ClipJudge` loads."""
    from safetensors.torch import load_file

    cfg = ClipJudgeConfig(steps=2, batch=16, negatives=4, hidden=32, vision_layers=1, text_layers=1, eval_images=8)
    for run in ("a", "b"):
        train_clip_judge(cfg, tmp_path / run, progress=False)
    first, second = (load_file(tmp_path / run / "model.safetensors") for run in ("a", "b"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    judge = ClipJudge.load(str(tmp_path / "a"), HEADS)
    assert judge.probabilities(np.zeros((2, 32, 32, 3), np.uint8))["object"].shape == (2, len(HEADS["object"]))


def test_the_judge_is_no_part_of_the_base_model_s_identity(tmp_path):
    """The base's digest (caches, manifests, deltas' parents) is the same with or without the judge's folder."""
    from unlearning.shapes.shipped import weights_sha256

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "weights.safetensors").write_bytes(b"unet")
    before = weights_sha256(tmp_path)
    (tmp_path / "clip_judge").mkdir()
    (tmp_path / "clip_judge" / "model.safetensors").write_bytes(b"judge")
    assert weights_sha256(tmp_path) == before
    (tmp_path / "detector.safetensors").write_bytes(b"detector")
    assert weights_sha256(tmp_path) != before
