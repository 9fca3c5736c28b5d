"""Benchmark: which sampler the gate can afford — accuracy of the base and cost per image, side by side.

    .venv/bin/python bench/sampler.py [--samplers ddim:25 ddim:16 ddim:12 ddim:10] [--colours 6]
                                      [--targets circle striped star]

Every sampler draws the same prompts and seeds. Two tables:
- the world-eval plan (training and held-out templates, `--colours` colours per object x style
  combination): the first judge's accuracy per head, and how often its top-1 classes agree with the
  first sampler's on the same (prompt, seed);
- the gate's forget sets of each `--targets` concept (96 images each): on how many the base draws the
  target. UA is measured only there, and the gate decides only on >= min_n (50) such images, so a
  sampler that draws a weak concept (striped) less often can leave the gate unable to decide.
Almost every second of the gate is UNet evaluations (sampler steps x images), so a sampler with fewer
steps that draws the same concepts as well is the cheapest way to a faster gate. Prints Markdown
tables (paste them into bench/RESULTS.md with the date and machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", nargs="+", default=["ddim:25", "ddim:16", "ddim:12", "ddim:10"])
    parser.add_argument("--targets", nargs="*", default=["circle", "striped", "star"])
    parser.add_argument("--colours", type=int, default=6, help="colours per object x style (1-6)")
    parser.add_argument("--guidance", type=float, default=5.0)
    args = parser.parse_args()

    import numpy as np
    import torch

    from pipeline.evaluator import Evaluator
    from pipeline.settings import load_settings
    from unlearning.sampling import generate, load_model, use_scheduler
    from unlearning.shapes.detector import HEADS
    from unlearning.shapes.judge import shapes_judges
    from unlearning.shapes.world_eval import accuracy_per_head, base_plan

    judge = shapes_judges()[0]
    pipe = load_model("shapes")
    plans = {split: base_plan(split, args.colours) for split in ("train_templates", "heldout")}
    print(
        f"## Samplers: the base judged on the world-eval plan ({args.colours} colours per combination) — "
        f"{date.today()}, {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads\n"
    )
    print(
        "| sampler | set | n | object | style | colour | min concept | top-1 agreement with the first | s per image |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    reference: dict[str, dict] = {}
    for spec in args.samplers:
        name, steps = spec.split(":")
        use_scheduler(pipe, name)
        for split, (scenes, prompts, seeds) in plans.items():
            started = time.perf_counter()
            images = generate(pipe, prompts, seeds, steps=int(steps), guidance_scale=args.guidance)
            per_image = (time.perf_counter() - started) / len(images)
            probs = judge.probabilities(images)
            top1 = {head: probs[head].argmax(axis=1) for head in HEADS}
            reference.setdefault(split, top1)
            same = np.ones(len(images), dtype=bool)
            for head in HEADS:
                same &= top1[head] == reference[split][head]
            accuracy, per_class = accuracy_per_head({h: torch.from_numpy(p) for h, p in probs.items()}, scenes)
            per_concept = {**per_class["object"], **per_class["style"]}
            worst = min(per_concept, key=per_concept.get)
            print(
                f"| {spec} | {split} | {len(images)} | {accuracy['object']:.3f} | {accuracy['style']:.3f} | "
                f"{accuracy['colour']:.3f} | {worst} {per_concept[worst]:.2f} | {same.mean():.3f} | {per_image:.3f} |",
                flush=True,
            )

    evaluator = Evaluator.from_settings(load_settings(), gate=False)
    forget_sets = {t: [c for c in evaluator.plan(t).cases if c.group.startswith("forget/")] for t in args.targets}
    print("\n| sampler | target | the base draws it: gate | held-out | synonyms | s per image |")
    print("|---|---|---|---|---|---|")
    for spec in args.samplers:
        name, steps = spec.split(":")
        use_scheduler(pipe, name)
        for target, cases in forget_sets.items():
            started = time.perf_counter()
            images = generate(
                pipe, [c.prompt for c in cases], [c.seed for c in cases], steps=int(steps), guidance_scale=args.guidance
            )
            per_image = (time.perf_counter() - started) / len(images)
            head = cases[0].domain
            top1 = judge.probabilities(images)[head].argmax(axis=1)
            drawn: dict[str, list[bool]] = {}
            for case, cls in zip(cases, top1):
                drawn.setdefault(case.group.split("/", 1)[1], []).append(HEADS[head][cls] == target)
            counts = " | ".join(f"{sum(drawn[s])}/{len(drawn[s])}" for s in ("gate", "heldout", "synonyms"))
            print(f"| {spec} | {target} | {counts} | {per_image:.3f} |", flush=True)


if __name__ == "__main__":
    main()
