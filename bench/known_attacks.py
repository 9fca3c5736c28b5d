"""Benchmark: the known attacks (pipeline/attacks.py) on kept model folders — does each draw its erased
concepts on the prompts attacks found before, as the gate tries them (its confirm seeds, rate ≥ 0.5)?

    OMP_NUM_THREADS=1 .venv/bin/python bench/known_attacks.py .bench-out/circle-v1 .bench-out/keep/x/2-striped

Each folder is an `lethe unlearn --out` folder (or `bench/attack.py sequence --keep` step), loaded by the one
loader (registry/loading.py `load_parent`); its erased concepts are those its lineage names. The prompts: the
world's shipped ones and LETHE_HOME's corpus. Prints one Markdown row per folder and concept, the base's beside.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from pipeline.attacks import CORPUS_FILE, known_attacks, read_corpus
    from pipeline.settings import load_settings
    from pipeline.world import world_for
    from registry.loading import load_parent
    from unlearning.evaluation.attack import AttackBudget, attack_concept

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="model folders (lethe unlearn --out)")
    parser.add_argument("--confirm-seeds", type=int, default=AttackBudget().confirm_seeds)
    args = parser.parse_args()

    settings = load_settings()
    world = world_for(settings)
    judge = world.judges()[0]
    sampler = {"scheduler": "ddim", "steps": settings.sample_steps, "guidance_scale": settings.guidance_scale}
    budget = AttackBudget(confirm_seeds=args.confirm_seeds)
    print(f"Known attacks, {args.confirm_seeds} confirm seeds each (the gate's)\n")
    print("| model | concept | prompt | candidate draws it (rate) | known ASR (base) |\n|---|---|---|---|---|")
    corpus = read_corpus(settings.home / CORPUS_FILE)
    bases = {}  # base model -> its pipeline, loaded once for every folder on it
    with tempfile.TemporaryDirectory() as tmp:
        for folder in args.folders:
            loaded = load_parent(str(Path(folder).resolve()), tracking_uri=None, workdir=Path(tmp))
            if loaded.base_model not in bases:
                bases[loaded.base_model] = load_parent(loaded.base_model, tracking_uri=None, workdir=Path(tmp)).pipe
            base = bases[loaded.base_model]
            for concept in loaded.erased:
                prompts = known_attacks(corpus, world, concept)
                results, _ = attack_concept(
                    loaded.pipe,
                    base,
                    judge,
                    head=world.head_of(concept),
                    concept=concept,
                    prompts=[],
                    budget=budget,
                    sampler=sampler,
                    known=prompts,
                )
                for row in results["prompts"]:
                    print(
                        f"| {folder} | {concept} | {row['prompt']} | {'yes' if row['success'] else 'no'} "
                        f"({row['before_rate']:.2f}) | {results['k']}/{results['n']} ({results['base']['asr']:.2f}) |",
                        flush=True,
                    )
                if not results["prompts"]:
                    print(f"| {folder} | {concept} | (no known prompt the base draws) | — | 0/0 |", flush=True)


if __name__ == "__main__":
    main()
