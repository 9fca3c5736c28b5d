"""Benchmark: does the shapes world's CLIP-format judge agree with the shapes detector on generated images?

    OMP_NUM_THREADS=1 LETHE_JUDGE_MODEL=unlearning/shapes/weights/clip_judge \
        .venv/bin/python bench/clip_judge.py [--forget-images 16] [--retain-images 24] [--no-edit]

The judge (unlearning/shapes/clip_judge.py, loaded by unlearning/evaluation/clip_judge.py `ClipJudge` as
the open world loads any CLIP) is told, per request of the main job (examples/requests.yaml: circle with
preserve ring, then striped, then star, each with the concepts erased before), the classes the open world
would give it: target, anchor (the shapes world's default, `default_anchor`), preserve, erased, then the
classes the operator lists (`LETHE_JUDGE_OBJECTS`, `LETHE_JUDGE_STYLES`, as the open world's main job is
run with them: bench/RESULTS.md), then the open world's distractors (unlearning/open_plan.py `judge_heads`).
The images are what the world's UNet draws for the shapes plan's prompts and seeds (unlearning/shapes/plan.py):
its three forget sets (gate, held-out, synonyms) and the retain sets of the anchor and the preserve concepts.
On each image:

- forget verdict: is it the target? the CLIP's top-1 over its head against the detector's over the
  world's classes of that domain (unlearning/shapes/judge.py);
- retain verdict: is it the retained concept its prompt asks for? the same two top-1s.

Agreement is the share of images on which the two verdicts are the same, with its Wilson 95 % interval.
The base model draws what it is asked almost always, so `--no-edit` aside, the circle request is also
judged on a continual-uce edit of circle (unlearning/loop.py `run_unlearning`, seconds on the shapes
world), whose forget images mostly show something else: there "not the target" must agree too.

Prints a Markdown table (paste it into bench/RESULTS.md with the date and machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

# The main job's requests, in order (examples/requests.yaml): (target, synonyms, preserve).
REQUESTS = (("circle", ("disc",), ("ring",)), ("striped", ("stripy",), ()), ("star", ("pentagram",), ()))


def head_of(concept: str, listed_styles: tuple[str, ...] = ()) -> str:
    from unlearning.open_plan import DISTRACTORS
    from unlearning.shapes.vocabulary import STYLES

    return "style" if concept in (*STYLES, *listed_styles, *DISTRACTORS["style"]) else "object"


def cases_of(target, synonyms, preserve, erased, forget_images, retain_images):
    """(LineageConcepts, [(verdict, concept, prompt, seed)]) of one request: its forget and retained sets."""
    from unlearning.evaluation.plan import PlanSize
    from unlearning.open_plan import LineageConcepts
    from unlearning.shapes.plan import shapes_plan
    from unlearning.shapes.prompts import default_anchor
    from unlearning.shapes.vocabulary import domain_of

    anchor = default_anchor(domain_of(target), {target, *erased})
    concepts = LineageConcepts(target, anchor, preserve, erased)
    size = PlanSize(forget_images=forget_images, retain_images=retain_images, retain_head_images=0)
    plan = shapes_plan(target, synonyms=synonyms, erased=erased, size=size)
    retained = set(concepts.retained())
    cases = [
        ("forget" if case.group.startswith("forget/") else "retain", case.concept, case.prompt, case.seed)
        for case in plan.cases
        if case.group.startswith("forget/") or (case.group.startswith("retain/") and case.concept in retained)
    ]
    return concepts, cases


def judged(pipe, clip_source, detector, concepts, cases, steps, guidance, cache, listed=((), ())):
    """Per case: (verdict, concept, detector says concept, CLIP says concept); `listed`: the operator's
    (objects, styles), told apart after the lineage's concepts as the open world does."""
    import numpy as np

    from unlearning.evaluation.clip_judge import ClipJudge
    from unlearning.open_plan import judge_heads
    from unlearning.sampling import generate

    missing = [(p, s) for _, _, p, s in cases if (p, s) not in cache]
    if missing:
        images = generate(pipe, [p for p, _ in missing], [s for _, s in missing], steps=steps, guidance_scale=guidance)
        cache.update(zip(missing, images))
    images = np.stack([cache[(p, s)] for _, _, p, s in cases])
    objects, styles = listed
    clip = ClipJudge.load(clip_source, judge_heads(concepts, lambda c: head_of(c, styles), (*objects, *styles)))
    clip_probs, detector_probs = clip.probabilities(images), detector.probabilities(images)
    rows = []
    for k, (verdict, concept, _, _) in enumerate(cases):
        head = head_of(concept)
        says_detector = detector.heads[head][detector_probs[head][k].argmax()] == concept
        says_clip = clip.heads[head][clip_probs[head][k].argmax()] == concept
        rows.append((verdict, concept, bool(says_detector), bool(says_clip)))
    return rows


def agreement(rows) -> tuple[str, str]:
    """(the cells n | detector yes | CLIP yes | agree, the agreement with its Wilson 95 % interval) of `rows`."""
    from unlearning.evaluation.stats import wilson_interval

    n, agree = len(rows), sum(d == c for _, _, d, c in rows)
    low, high = wilson_interval(agree, n)
    return (
        f"{n} | {sum(r[2] for r in rows)} | {sum(r[3] for r in rows)} | {agree}",
        f"{agree / n:.3f} [{low:.3f}, {high:.3f}]",
    )


def table_rows(model: str, request: str, rows) -> list[str]:
    out = []
    for verdict in ("forget", "retain"):
        mine = [r for r in rows if r[0] == verdict]
        concepts = ", ".join(dict.fromkeys(r[1] for r in mine))
        counts, share = agreement(mine)
        out.append(f"| {model} | {request} | {verdict} ({concepts}) | {counts} | {share} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forget-images", type=int, default=16, help="per forget set (gate, held-out, synonyms)")
    parser.add_argument("--retain-images", type=int, default=24, help="per retained concept")
    parser.add_argument("--steps", type=int, default=16, help="sampler steps (the settings' default)")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--no-edit", action="store_true", help="judge the base model only")
    args = parser.parse_args()

    import torch

    from pipeline.settings import load_settings
    from unlearning.loop import UnlearnConfig, run_unlearning
    from unlearning.mining import parent_screen
    from unlearning.sampling import load_model
    from unlearning.shapes.judge import shapes_judges
    from unlearning.shapes.world import ShapesWorld

    clip_source = os.environ.get("LETHE_JUDGE_MODEL", "unlearning/shapes/weights/clip_judge")
    settings = load_settings()
    listed = (tuple(settings.judge_objects), tuple(settings.judge_styles))
    started = time.perf_counter()
    pipe = load_model("shapes")
    detector, _ = shapes_judges()
    print(
        f"## CLIP judge against the shapes detector — {date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} thread(s)\n"
    )
    print(
        f"Judge `{clip_source}`, listed objects {', '.join(listed[0]) or '—'}, listed styles "
        f"{', '.join(listed[1]) or '—'}; sampler {args.steps} steps, guidance {args.guidance}.\n"
    )
    print("| model | request | verdict (concepts) | n | detector yes | CLIP yes | agree | agreement [Wilson 95 %] |")
    print("|---|---|---|---|---|---|---|---|")
    every, cache, erased = [], {}, ()
    for target, synonyms, preserve in REQUESTS:
        concepts, cases = cases_of(target, synonyms, preserve, erased, args.forget_images, args.retain_images)
        rows = judged(pipe, clip_source, detector, concepts, cases, args.steps, args.guidance, cache, listed)
        every += rows
        print("\n".join(table_rows("base", target, rows)), flush=True)
        erased = (*erased, target)
    if not args.no_edit:
        target, synonyms, preserve = REQUESTS[0]
        base_values = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
        config = UnlearnConfig(concept=target, synonyms=synonyms, preserve=preserve, method="continual-uce")
        with tempfile.TemporaryDirectory() as tmp:
            run_unlearning(
                pipe,
                config,
                Path(tmp),
                prompts=ShapesWorld().request_prompts(config),
                model_sha="bench-clip-judge",
                base_values=base_values,
                progress=False,
                drawn_by_parent=parent_screen(pipe, ShapesWorld(), config),
            )
        concepts, cases = cases_of(target, synonyms, preserve, (), args.forget_images, args.retain_images)
        rows = judged(pipe, clip_source, detector, concepts, cases, args.steps, args.guidance, {}, listed)
        every += rows
        print("\n".join(table_rows("continual-uce edit of circle", target, rows)), flush=True)
    for verdict in ("forget", "retain"):
        counts, share = agreement([r for r in every if r[0] == verdict])
        print(f"| **all** | | **{verdict}** | {counts} | **{share}** |")
    print(f"\n{len(every)} verdicts, {time.perf_counter() - started:.0f} s in all.")


if __name__ == "__main__":
    main()
