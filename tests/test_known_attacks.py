"""Known attacks (pipeline/attacks.py): every prompt an attack confirmed is kept in LETHE_HOME and, with the
world's shipped ones, tried as it is on every later candidate (unlearning/evaluation/attack.py `known`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import attacks
from unlearning.evaluation import attack as attack_module
from unlearning.evaluation.attack import AttackBudget, attack_concept
from unlearning.shapes.world import ShapesWorld
from unlearning.world import OpenWorld


def _attack_results(*found: str, failed: str = "") -> dict:
    attacks_tried = [{"adversarial_prompt": p, "success": True} for p in found]
    attacks_tried += [{"adversarial_prompt": failed, "success": False}] if failed else []
    return {"circle": {"prompts": [{"prompt": "a circle", "attacks": attacks_tried}]}, "star": {"prompts": []}}


def test_confirmed_prompts_are_recorded_once_and_read_back_after_the_shipped_ones(tmp_path):
    corpus = tmp_path / "home" / attacks.CORPUS_FILE
    assert attacks.record_found(corpus, _attack_results("w1 a circle", failed="w2 a circle")) == 1
    assert attacks.record_found(corpus, _attack_results("w1 a circle", "w3 a circle")) == 1  # w1 known already
    assert json.loads(corpus.read_text()) == {"circle": ["w1 a circle", "w3 a circle"]}  # nothing found for star
    shipped = ShapesWorld().known_attacks("circle")
    assert shipped and shipped[0].startswith("paper horse balance circular curve")
    found = attacks.read_corpus(corpus)
    assert attacks.known_attacks(found, ShapesWorld(), "circle") == (*shipped, "w1 a circle", "w3 a circle")
    assert attacks.known_attacks({}, ShapesWorld(), "star") == ()
    assert attacks.known_attacks(found, OpenWorld(None), "circle") == ("w1 a circle", "w3 a circle")
    assert not list(corpus.parent.glob("*.tmp"))  # written by rename


@pytest.mark.parametrize("text", ["[1, 2]", '{"circle": "a circle"}', "{not json"])
def test_a_malformed_corpus_is_one_clear_error(tmp_path, text):
    corpus = tmp_path / attacks.CORPUS_FILE
    corpus.write_text(text)
    with pytest.raises(attacks.CorpusError, match=str(corpus)):
        attacks.read_corpus(corpus)


RECORDER = """
import sys
from pathlib import Path
from pipeline import attacks
corpus, worker = Path(sys.argv[1]), sys.argv[2]
for k in range(15):
    found = {"circle": {"prompts": [{"attacks": [{"adversarial_prompt": f"worker{worker} prompt{k} a circle",
                                                  "success": True}]}]}}
    attacks.record_found(corpus, found)
"""


def test_evaluations_recording_at_once_lose_nothing(tmp_path):
    """Four processes add 15 prompts each to one corpus at the same time: all 60 are there (without the lock,
    a read between another's read and rename drops that one's additions)."""
    import subprocess
    import sys

    corpus = tmp_path / attacks.CORPUS_FILE
    workers = [
        subprocess.Popen([sys.executable, "-c", RECORDER, str(corpus), str(w)], stderr=subprocess.PIPE, text=True)
        for w in range(4)
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0, worker.stderr.read()
    assert sorted(attacks.read_corpus(corpus)["circle"]) == sorted(
        f"worker{w} prompt{k} a circle" for w in range(4) for k in range(15)
    )


def test_a_known_prompt_counts_where_the_base_draws_it(monkeypatch):
    """The base draws k1 and k2 (not k3); the candidate draws k1 only: k3 is not tried, k1 is a success, and
    the ASR over the two tried is 1/2 — with no phrasing attacked at all."""
    base, candidate = object(), object()
    drawn = {base: {"k1", "k2"}, candidate: {"k1"}}

    def draws(pipe, judge, head, concept, prompt, seeds, sampler):
        hit = prompt in drawn[pipe]
        return float(hit), np.zeros((len(seeds), 2, 2, 3), dtype=np.uint8)

    monkeypatch.setattr(attack_module, "_draws", draws)
    results, images = attack_concept(
        candidate,
        base,
        judge=None,
        head="object",
        concept="circle",
        prompts=[],
        budget=AttackBudget(confirm_seeds=2),
        sampler={},
        known=("k1", "k2", "k3", "k1"),
    )
    assert [(r["prompt"], r["known"], r["success"]) for r in results["prompts"]] == [
        ("k1", True, True),
        ("k2", True, False),
    ]
    assert (results["k"], results["n"], results["asr"]) == (1, 2, 0.5)
    assert results["base"]["asr"] == 1.0 and results["base"]["n"] == 2
    assert set(images) == {"k1"}


def test_the_evaluator_tries_the_corpus_and_records_what_its_attack_found(tmp_path, monkeypatch):
    """Evaluator.evaluate passes the shipped and recorded prompts of every concept it judges to the attack,
    and adds what the attack confirmed to the corpus (the heavy evaluation replaced by its result)."""
    import pipeline.evaluator as evaluator_module
    from pipeline.evaluator import Evaluator
    from unlearning.evaluation.evaluate import Evaluation
    from unlearning.evaluation.plan import EvaluationPlan, PlanSize

    corpus = tmp_path / attacks.CORPUS_FILE
    attacks.record_found(corpus, _attack_results("w1 a circle"))
    seen = {}

    def fake_evaluate(candidate, base, judges, plan, *, probes, **_):
        seen.update(probes.known_attacks)
        empty = np.zeros((0, 2, 2, 3), dtype=np.uint8)
        results = {"attack": _attack_results("w9 a circle")} if probes.attack else {}  # no attack, no results
        return Evaluation(plan, results, None, empty, empty, {})

    monkeypatch.setattr(evaluator_module, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluator_module, "drift", lambda *_: 0.0)
    monkeypatch.setattr(evaluator_module, "denoiser", lambda pipe: pipe)
    world = ShapesWorld()
    evaluator = Evaluator(
        world=world, policy=None, sampler={}, size=None, cache=None, attack=AttackBudget(), attack_corpus=corpus
    )
    plan = EvaluationPlan(target="circle", synonyms=(), erased=("striped",), size=PlanSize(), cases=())
    evaluator.evaluate(object(), object(), plan, base_sha256="0" * 64)
    assert seen == {"circle": (*world.known_attacks("circle"), "w1 a circle"), "striped": ()}
    assert json.loads(corpus.read_text())["circle"] == ["w1 a circle", "w9 a circle"]
    seen.clear()  # with the attack off, the corpus is not read at all (a broken one stops nothing)
    corpus.write_text("{not json")
    evaluator.attack = None
    evaluator.evaluate(object(), object(), plan, base_sha256="0" * 64)
    assert seen == {}
