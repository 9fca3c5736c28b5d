"""The per-concept retain rule in two stages (unlearning/evaluation/retain_confirm.py): a retained concept
whose ratio fails its bound on the plan's images is drawn again on fresh seeds and decided on both stages
pooled, with the same bound — its counts, its wiring through `evaluate`, the settings and the reports, and on
the shipped shapes model: a drop confined to the gate's seeds passes, a real erosion still fails."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest

import unlearning.evaluation.evaluate as evaluate_module
from pipeline.evaluator import Evaluator
from pipeline.settings import LetheSettings
from tests.tiny_models import uce_edited_copy
from unlearning.evaluation.cache import ImageCache
from unlearning.evaluation.checks import retained_accuracy
from unlearning.evaluation.evaluate import confirm_retained, evaluate
from unlearning.evaluation.gates import decide, load_policy
from unlearning.evaluation.plan import PlanSize
from unlearning.evaluation.report import evaluation_payload, write_report
from unlearning.evaluation.retain_confirm import confirm_plan, retain_stages, screen_fails
from unlearning.sampling import model_identity
from unlearning.shapes.plan import shapes_plan

SAMPLER = {"scheduler": "ddim", "steps": 12, "guidance_scale": 5.0}
SQUARE = "retain.per_concept.square.relative"


def _stage(candidate: int, base: int, prompts: int, seeds: int, *, candidate_misses_first=True):
    """(candidate hits, base hits, prompts) of `prompts` x `seeds` images, the base drawing the concept on
    `base` of them and the candidate on `candidate` of those (it never draws what the base did not)."""
    n = prompts * seeds
    base_hits = np.zeros(n)
    base_hits[:base] = 1
    candidate_hits = base_hits.copy()
    candidate_hits[: base - candidate] = 0
    return candidate_hits, base_hits, np.repeat([f"a square {p}" for p in range(prompts)], seeds)


def _square_check(entry: dict):
    decision = decide({"retain": {"per_concept": {"square": entry}}}, load_policy())
    (check,) = [c for c in decision.checks if c.metric == SQUARE]
    return check


def test_a_screen_that_fails_by_noise_passes_on_the_pooled_counts():
    """The measured case (bench/RESULTS.md): the anchor square 21/24 against the base's 23/24 on the gate's
    seeds, x 0.913 < 0.934; on 72 fresh images both draw it 69 times. Pooled: 90/96 against 92/96,
    x 90/92 = 0.978, and the shipped rule passes it on n 96 — the screen alone fails it."""
    screen, fresh = _stage(21, 23, 8, 3), _stage(69, 69, 8, 9)
    alone = retain_stages(screen, None, bound=0.934)
    assert alone["decided_by"] == "screen" and alone["relative"] == pytest.approx(21 / 23)
    assert screen_fails(alone, 0.934) and not _square_check(alone).passed

    entry = retain_stages(screen, fresh, bound=0.934)
    assert entry["decided_by"] == "pooled" and entry["screen_bound"] == 0.934
    assert entry["screen"] == {"candidate": 21, "base": 23, "n": 24, "relative": pytest.approx(21 / 23)}
    assert entry["fresh"] == {"candidate": 69, "base": 69, "n": 72, "relative": 1.0}
    assert (entry["k"], entry["base_k"], entry["n"]) == (90, 92, 96)
    assert entry["relative"] == pytest.approx(90 / 92) and entry["accuracy"] == pytest.approx(90 / 96)
    low, high = entry["relative_bootstrap"]
    assert low <= 90 / 92 <= high
    check = _square_check(entry)
    assert check.passed and check.n == 96 and check.value == pytest.approx(90 / 92)


def test_a_real_drop_still_fails_after_pooling():
    """The candidate loses a fifth of the base's squares on both the screening and the fresh seeds: 18/23 and
    55/69, pooled 73/92 = x 0.793 — under the same bound, the rule fails it with the pooled n."""
    entry = retain_stages(_stage(18, 23, 8, 3), _stage(55, 69, 8, 9), bound=0.934)
    assert entry["decided_by"] == "pooled" and (entry["k"], entry["base_k"], entry["n"]) == (73, 92, 96)
    check = _square_check(entry)
    assert not check.passed and check.n == 96 and check.value == pytest.approx(73 / 92)
    assert check.reason.startswith(f"{SQUARE} = 0.793 < 0.934")


def test_only_a_ratio_below_the_bound_goes_to_the_second_stage():
    assert screen_fails({"relative": 0.933}, 0.934) and not screen_fails({"relative": 0.934}, 0.934)
    assert not screen_fails({"relative": 0.5}, None)  # no policy bounds it: nothing to confirm
    assert not screen_fails({"relative": float("nan")}, 0.934)  # no images: nothing to draw again


def test_the_fresh_seeds_are_the_concepts_prompts_on_seeds_the_plan_does_not_use():
    plan = shapes_plan("star", size=PlanSize(forget_images=3, retain_images=24, retain_head_images=0))
    square = [c for c in plan.cases if c.group == "retain/in/square"]
    fresh = confirm_plan(plan, "square", 9)
    prompts = list(dict.fromkeys(c.prompt for c in square))
    assert [c.prompt for c in fresh.cases] == [p for p in prompts for _ in range(9)] and len(prompts) == 8
    assert all(c.group == "retain/in/square" and c.concept == "square" for c in fresh.cases)
    assert not {c.seed for c in fresh.cases} & {c.seed for c in plan.cases}
    assert len({(c.prompt, c.seed) for c in fresh.cases}) == 72
    assert confirm_plan(plan, "square", 9) == fresh  # the same seeds every time: the base's come from the cache
    # a seed the plan holds is skipped, even where the index would give it
    taken = replace(square[0], seed=fresh.cases[0].seed)
    crowded = replace(plan, cases=(*plan.cases, taken))
    again = confirm_plan(crowded, "square", 9)
    assert fresh.cases[0].seed not in {c.seed for c in again.cases} and len(again.cases) == 72
    assert [c.seed for c in again.cases[:8]] == [c.seed for c in fresh.cases[1:9]]  # the next index instead
    # the calibration's other seed sets (plan seed_offset) move the fresh seeds with them
    other = shapes_plan(
        "star", size=PlanSize(forget_images=3, retain_images=24, retain_head_images=0, seed_offset=1000)
    )
    assert not {c.seed for c in confirm_plan(other, "square", 9).cases} & {c.seed for c in fresh.cases}


class _SeesSquares:
    """A judge that sees a square on every image of the object head, except an all-zero image."""

    name = "squares"
    heads = {"object": ("circle", "square")}

    def probabilities(self, images):
        drawn = images.reshape(len(images), -1).max(axis=1) > 0
        return {"object": np.stack([~drawn, drawn], axis=1).astype(float)}


def _screened(plan, misses: int):
    """run_checks' per-concept entries of a plan on which the candidate misses `misses` of square's images."""
    candidate_hits, base_hits = np.ones(len(plan.cases)), np.ones(len(plan.cases))
    candidate_hits[plan.groups()["retain/in/square"][:misses]] = 0
    prompts = np.array([c.prompt for c in plan.cases])
    per_concept = {}
    for group, idx in plan.groups().items():
        if group.startswith("retain/"):
            _, kind, concept = group.split("/")
            per_concept[concept] = {
                **retained_accuracy(candidate_hits[idx], base_hits[idx], prompts[idx]),
                "kind": kind,
            }
    return {"retain": {"per_concept": per_concept}}, (candidate_hits, base_hits)


def test_evaluate_draws_again_only_the_concept_that_fails_and_only_under_a_bound(monkeypatch):
    """`confirm_retained` as `evaluate` calls it, its samplers stubbed (every fresh image shows a square): only
    square (22/24, x 0.917) is drawn, both models on its 8 prompts x 3 fresh seeds, and decided on 48 images;
    circle and the rest keep their screen. With no fresh seeds, or no policy, nothing is drawn."""
    drawn = []

    def sampler(pipe, prompts, seeds, **_):
        drawn.append((pipe, list(prompts), list(seeds)))
        return np.ones((len(prompts), 2, 2, 3), dtype=np.uint8)

    monkeypatch.setattr(evaluate_module, "generate", sampler)
    monkeypatch.setattr(evaluate_module, "generate_cached", lambda pipe, p, s, **kw: (sampler(pipe, p, s), len(p)))
    size = PlanSize(forget_images=3, retain_images=24, retain_head_images=0, retain_confirm_seeds=3)
    plan = replace(shapes_plan("star", size=size), target=None)
    plan = replace(plan, cases=tuple(c for c in plan.cases if c.group.startswith("retain/")))
    results, screen_hits = _screened(plan, misses=2)

    def confirm(plan, policy):
        return confirm_retained(
            "candidate",
            "base",
            _SeesSquares(),
            plan,
            results,
            screen_hits,
            policy,
            sampler=SAMPLER,
            base_sha256="b",
            cache=None,
        )

    images = confirm(plan, load_policy())
    per_concept = results["retain"]["per_concept"]
    square = per_concept["square"]
    assert [pipe for pipe, _, _ in drawn] == ["base", "candidate"] and list(images) == ["square"]
    assert drawn[0][1:] == drawn[1][1:] and len(drawn[0][2]) == 24  # the same prompts and seeds for both
    assert set(drawn[0][1]) == {c.prompt for c in plan.cases if c.concept == "square"}
    assert not set(drawn[0][2]) & {c.seed for c in plan.cases}
    assert square["decided_by"] == "pooled" and square["screen"]["candidate"] == 22
    assert square["fresh"] == {"candidate": 24, "base": 24, "n": 24, "relative": 1.0, "seeds": 3}
    assert (square["k"], square["base_k"], square["n"]) == (46, 48, 48)
    assert results["retain"]["min_concept_relative"] == pytest.approx(46 / 48)
    others = [entry for concept, entry in per_concept.items() if concept != "square"]
    assert others and all(e["decided_by"] == "screen" and e["fresh"]["n"] == 0 for e in others)
    assert all(e["screen_bound"] == 0.934 for e in per_concept.values())

    drawn.clear()
    results, screen_hits = _screened(plan, misses=2)
    assert confirm(replace(plan, size=replace(size, retain_confirm_seeds=0)), load_policy()) == {}
    assert results["retain"]["per_concept"]["square"]["decided_by"] == "screen" and not drawn
    results, screen_hits = _screened(plan, misses=2)
    assert confirm(plan, None) == {} and not drawn
    assert results["retain"]["per_concept"]["square"]["screen_bound"] is None


def test_the_fresh_seeds_are_a_setting_like_the_leaks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert LetheSettings.model_fields["eval_retain_confirm_seeds"].default == 9 == PlanSize().retain_confirm_seeds
    monkeypatch.setenv("LETHE_EVAL_RETAIN_CONFIRM_SEEDS", "5")
    settings = LetheSettings(home=tmp_path)
    assert settings.eval_retain_confirm_seeds == 5
    assert Evaluator.from_settings(settings, gate=False).size.retain_confirm_seeds == 5
    monkeypatch.setenv("LETHE_EVAL_RETAIN_CONFIRM_SEEDS", "-1")
    with pytest.raises(ValueError, match="eval_retain_confirm_seeds"):
        LetheSettings(home=tmp_path)


def _two_concept_plan(seeds: int):
    """Square's and circle's retain sets of a star request at the gate's size (24 images each), nothing else."""
    size = PlanSize(forget_images=3, retain_images=24, retain_head_images=0, retain_confirm_seeds=seeds)
    plan = shapes_plan("star", size=size)
    kept = tuple(c for c in plan.cases if c.group in ("retain/in/square", "retain/in/circle"))
    return replace(plan, target=None, cases=kept)


def _evaluate(candidate, shapes_pipe, judges, plan, tmp_path):
    return evaluate(
        candidate,
        shapes_pipe,
        judges,
        plan,
        sampler=SAMPLER,
        base_sha256=model_identity("shapes")[1],
        cache=ImageCache(tmp_path / "cache"),
        policy=load_policy(),
    )


def _verdict(evaluation, concept: str) -> bool:
    (check,) = [c for c in evaluation.decision.checks if c.metric == f"retain.per_concept.{concept}.relative"]
    return check.passed


@pytest.mark.slow
def test_a_drop_on_the_gates_seeds_only_passes_on_fresh_seeds(shapes_pipe, judges, tmp_path, monkeypatch, capsys):
    """The measured case on the shipped model: a candidate that is the base except on two of square's 24 images
    (it draws a circle there, on the plan's seeds only) fails the screen; drawn again on fresh seeds it equals
    the base, the pooled ratio passes the same bound, and circle, which passed its screen, is not drawn again.
    Without the second stage the gate fails it. The reports carry both stages."""
    from flows.cli.report import print_evaluation

    plan = _two_concept_plan(seeds=3)
    square = [c for c in plan.cases if c.concept == "square"]
    damaged = {(c.prompt, c.seed) for c in square[:6:3]}  # the first seed of square's first two prompts
    real = evaluate_module.generate

    def candidate_draws(pipe, prompts, seeds, **options):
        prompts = ["a red circle" if (p, s) in damaged else p for p, s in zip(prompts, seeds)]
        return real(pipe, prompts, seeds, **options)

    monkeypatch.setattr(evaluate_module, "generate", candidate_draws)
    candidate = copy.deepcopy(shapes_pipe)  # the base's images, drawn on its own
    evaluation = _evaluate(candidate, shapes_pipe, judges, plan, tmp_path)
    entry = evaluation.results["retain"]["per_concept"]["square"]
    assert entry["screen"]["relative"] < 0.934 and entry["decided_by"] == "pooled", entry
    assert entry["fresh"]["n"] == 8 * 3 and entry["fresh"]["candidate"] == entry["fresh"]["base"] > 0
    assert entry["n"] == entry["screen"]["n"] + entry["fresh"]["n"] and entry["relative"] >= 0.934
    assert _verdict(evaluation, "square")
    circle = evaluation.results["retain"]["per_concept"]["circle"]
    assert circle["decided_by"] == "screen" and circle["fresh"]["n"] == 0 and _verdict(evaluation, "circle")
    assert list(evaluation.retain_confirm_images) == ["square"] and evaluation.timings["retain_confirm_images"] == 24

    html = write_report(evaluation, tmp_path / "report", title="retain confirm").read_text()
    recorded = json.loads((tmp_path / "report" / "evaluation.json").read_text())["checks"]["retain"]["per_concept"]
    assert recorded["square"]["decided_by"] == "pooled" and recorded["square"]["screen"] == entry["screen"]
    assert recorded["square"]["fresh"]["seeds"] == 3
    assert (
        "retain-confirm-square.png" in html and (tmp_path / "report" / "grids" / "retain-confirm-square.png").is_file()
    )
    assert f"screen {entry['screen']['candidate']}/24 vs base {entry['screen']['base']}/24" in html
    print_evaluation(evaluation_payload(evaluation), "report.html")
    printed = capsys.readouterr().out
    assert "retain concept square" in printed and "drawn again on fresh seeds: square" in printed

    alone = _evaluate(candidate, shapes_pipe, judges, _two_concept_plan(seeds=0), tmp_path)
    entry = alone.results["retain"]["per_concept"]["square"]
    assert entry["decided_by"] == "screen" and entry["relative"] < 0.934 and not _verdict(alone, "square")


@pytest.mark.slow
def test_a_real_erosion_still_fails_after_the_fresh_seeds(shapes_pipe, judges, tmp_path):
    """A UCE edit of square's tokens towards circle (as the leak's test erases circle): square drops on the
    plan's seeds and on the fresh ones, the pooled ratio stays under the same bound and the rule fails it."""
    eroding = uce_edited_copy(
        shapes_pipe,
        ["a square", "square", "a picture of a square"],
        ["a circle", "circle", "a picture of a circle"],
    )
    evaluation = _evaluate(eroding, shapes_pipe, judges, _two_concept_plan(seeds=3), tmp_path)
    entry = evaluation.results["retain"]["per_concept"]["square"]
    assert entry["decided_by"] == "pooled" and entry["fresh"]["n"] == 24, entry
    assert entry["fresh"]["relative"] < 0.934 and entry["relative"] < 0.934
    assert not _verdict(evaluation, "square")
    assert any(r.startswith("retain.per_concept.square.relative") for r in evaluation.decision.reasons)
