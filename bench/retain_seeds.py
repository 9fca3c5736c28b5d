"""Benchmark: is a retained concept's drop erosion, or the gate's seeds? Its retain rate, base against a
candidate, on the gate's own seeds and on fresh seed sets of the same prompts.

    OMP_NUM_THREADS=1 .venv/bin/python bench/retain_seeds.py MODEL_FOLDER --target striped \
        --concepts solid,gradient,checkered,dotted,speckled [--fresh-sets 3]

The gate's per-concept retain rule decides on ~30 images a concept (unlearning/evaluation/shapes_policy.yaml,
`retain.per_concept.*.relative` ≥ 0.934): where the base draws the concept on all 30, two images fail it
and one does not. This draws each named concept's retain prompts of the shapes plan (unlearning/shapes/
plan.py, the target's plan) on the gate's seeds (set 0) and on `--fresh-sets` more seed sets (the plan's
`seed_offset`, apart from bench/calibrate.py's), with the base and with MODEL_FOLDER (an `lethe unlearn --out`
folder or one kept by `bench/attack.py sequence --keep`), and judges every image with the shapes detector.
It prints, per set and model, how many images show the concept and what the others show, then the pooled
counts and their ratio. Not a gate: a measurement to tell a drop the gate saw from a drop that holds.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SEED_SET_STRIDE = 7919  # seed offsets of the fresh sets: not bench/calibrate.py's (multiples of 500 and 1000)


def main() -> None:
    from pipeline.prepare import load_parent_model
    from pipeline.settings import load_settings
    from unlearning.evaluation.plan import PlanSize
    from unlearning.sampling import generate, load_model
    from unlearning.shapes.plan import shapes_plan
    from unlearning.shapes.world import ShapesWorld

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the candidate: a model folder")
    parser.add_argument("--target", required=True, help="the request's target (whose plan's retain prompts are drawn)")
    parser.add_argument("--erased", nargs="*", default=[], help="concepts erased earlier in the candidate's lineage")
    parser.add_argument("--concepts", required=True, help="retained concepts to draw, comma-separated")
    parser.add_argument("--fresh-sets", type=int, default=3, help="seed sets beside the gate's")
    args = parser.parse_args()

    settings = load_settings()
    models = {"base": load_model("shapes"), "candidate": load_parent_model(settings, args.model).pipe}
    judge = ShapesWorld().judges()[0]
    pooled: dict[tuple[str, str], list[int]] = {}
    print("| seed set | concept | base | candidate | the candidate's misses show |\n|---|---|---|---|---|")
    for seed_set in range(args.fresh_sets + 1):
        plan = shapes_plan(
            args.target, erased=tuple(args.erased), size=PlanSize(seed_offset=seed_set * SEED_SET_STRIDE)
        )
        for concept in args.concepts.split(","):
            cases = [c for c in plan.cases if c.group.startswith("retain/") and c.concept == concept]
            if not cases:
                raise SystemExit(f"{concept!r} is not a retained concept of {args.target!r}'s plan")
            head = cases[0].domain
            seen = {}  # per model, what the judge sees on each image
            for name, pipe in models.items():
                images = generate(
                    pipe,
                    [c.prompt for c in cases],
                    [c.seed for c in cases],
                    steps=settings.sample_steps,
                    guidance_scale=settings.guidance_scale,
                )
                seen[name] = [judge.heads[head][i] for i in judge.probabilities(images)[head].argmax(axis=1)]
                total = pooled.setdefault((concept, name), [0, 0])
                total[0], total[1] = total[0] + seen[name].count(concept), total[1] + len(cases)
            misses = [s for s in seen["candidate"] if s != concept]
            print(
                f"| {seed_set} | {concept} | {seen['base'].count(concept)}/{len(cases)} "
                f"| {seen['candidate'].count(concept)}/{len(cases)} | {', '.join(misses) or '—'} |",
                flush=True,
            )
    print("\n| concept | base | candidate | relative |\n|---|---|---|---|")
    for concept in args.concepts.split(","):
        (kb, nb), (kc, nc) = pooled[(concept, "base")], pooled[(concept, "candidate")]
        print(f"| {concept} | {kb}/{nb} | {kc}/{nc} | {kc / nc / (kb / nb):.3f} |")


if __name__ == "__main__":
    main()
