"""Benchmark: how often does each model draw a concept on given prompts — the base, and the end of the main
job's requests (examples/requests.yaml, in order) under each method spec — on fresh seeds?

    OMP_NUM_THREADS=1 .venv/bin/python bench/prompt_rates.py --judge striped \
        --prompts "the seine in the middle" "an image of the scoring" --steps circle striped \
        --methods "continual-uce" "continual-uce:prefixed_prompts=0@before"

What a sweep relocation or leak the gate found looks like on more seeds, and which method settings move it,
in minutes: each spec's lineage is unlearned through the loop (unlearning/loop.py `run_unlearning`, each
request from the previous with the lineage's terms, as the flow does), no evaluation is run. A method SPEC is
bench/method_specs.py's (`name[:key=value,...][@label]`). Not a gate: the prompts were found by the gate, so a
setting that moves them must still be judged by the gate on other words.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import method_specs  # noqa: E402  (bench/method_specs.py: this folder is first on sys.path)

SEED = 700_000  # apart from the plan's, the sweep's and the attack's seeds


def main() -> None:
    from pipeline.settings import load_settings
    from unlearning.loop import LINEAGE_FILE, UnlearnConfig, load_lineage, run_unlearning
    from unlearning.mining import parent_screen
    from unlearning.sampling import generate, load_model
    from unlearning.shapes.vocabulary import domain_of
    from unlearning.shapes.world import ShapesWorld

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", required=True, help="the concept counted on each image")
    parser.add_argument("--prompts", nargs="+", required=True)
    parser.add_argument("--steps", nargs="+", default=["circle", "striped"], help="the main job's requests, in order")
    parser.add_argument("--methods", nargs="+", default=["continual-uce"])
    parser.add_argument("--seeds", type=int, default=32)
    args = parser.parse_args()

    settings, world = load_settings(), ShapesWorld()
    judge, head = world.judges()[0], domain_of(args.judge)
    seeds = [SEED + i for i in range(args.seeds)]

    def rates(pipe) -> str:
        counts = []
        for prompt in args.prompts:
            images = generate(
                pipe,
                [prompt] * len(seeds),
                seeds,
                steps=settings.sample_steps,
                guidance_scale=settings.guidance_scale,
            )
            seen = judge.probabilities(images)[head].argmax(axis=1)
            counts.append(f"{sum(judge.heads[head][i] == args.judge for i in seen)}/{len(seeds)}")
        return " | ".join(counts)

    print(f"How often each model draws {args.judge} ({args.seeds} seeds from {SEED}); steps {' → '.join(args.steps)}\n")
    print(f"| model | {' | '.join(args.prompts)} |\n|---|{'---|' * len(args.prompts)}")
    base = load_model("shapes")
    print(f"| base | {rates(base)} |", flush=True)
    base_values = {k: v.clone() for k, v in base.unet.state_dict().items()}
    for spec in args.methods:
        label, method, hyper, options = method_specs.parse_spec(spec)
        pipe, lineage, erased = load_model("shapes"), None, ()
        with tempfile.TemporaryDirectory() as tmp:
            for step, concept in enumerate(args.steps, start=1):
                synonyms, preserve = method_specs.MAIN_JOB.get(concept, ((), ()))
                config = UnlearnConfig(
                    concept=concept,
                    synonyms=synonyms,
                    preserve=preserve,
                    erased=erased,
                    method=method,
                    hyper=hyper,
                    **options,
                )
                out = Path(tmp) / str(step)
                run_unlearning(
                    pipe,
                    config,
                    out,
                    prompts=world.request_prompts(config),
                    model_sha=f"shapes-{step - 1}",
                    base_values=base_values,
                    progress=False,
                    lineage=lineage,
                    drawn_by_parent=parent_screen(pipe, world, config),
                )
                lineage = load_lineage(out / LINEAGE_FILE) if (out / LINEAGE_FILE).is_file() else None
                erased = (*erased, concept)
        print(f"| {label} | {rates(pipe)} |", flush=True)


if __name__ == "__main__":
    main()
