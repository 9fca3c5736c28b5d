"""Benchmark: unlearning on the shapes world (CPU) — one request per method, and a sequence.

    .venv/bin/python bench/unlearning.py single   [--methods duge esd-x] [--repeats 1] [--steps 150]
    .venv/bin/python bench/unlearning.py sequence [--methods duge esd-x] [--steps 150]

`single`: erase `circle` (synonym `disc`, preserve `ring`) from the base with each method; the same
evaluation (forget UA on gate / held-out / synonym prompts, IRA and CRA relative to base, `ring`
relative accuracy) and the median wall time of the request (train + evaluate).
`sequence`: erase circle, striped, star, dotted in turn, each from the previous version; after every
step the UA of every erased concept and IRA/CRA. `esd-x` runs without base-anchored regularisation,
as the unregularised sequence CUIG reports drift and rebound for.

Prints Markdown tables (paste them into bench/RESULTS.md with the date and machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Run as `python bench/X.py`, this folder comes first on sys.path, and bench/unlearning.py would
# shadow the `unlearning` package: take the folder off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
SEQUENCE = ("circle", "striped", "star", "dotted")


def _setup(eval_samples: int):
    """The base, its sha256 and the evaluator the pipeline uses (settings from the environment; the
    caches under a temporary LETHE_HOME unless one is set)."""
    from pipeline.evaluator import Evaluator
    from pipeline.settings import load_settings
    from unlearning.sampling import load_model, model_identity

    os.environ.setdefault("LETHE_HOME", str(Path(tempfile.gettempdir()) / "lethe-bench-home"))
    settings = load_settings()
    return (
        settings,
        load_model("shapes"),
        model_identity("shapes")[1],
        Evaluator.from_settings(settings, samples=eval_samples),
    )


def _request(settings, parent, base, base_sha, evaluator, *, concept, synonyms, preserve, erased, method, steps, out):
    from pipeline.prepare import request_prompts
    from unlearning.loop import UnlearnConfig, run_unlearning

    base_values = {k: v.clone() for k, v in base.unet.state_dict().items()}
    cfg = UnlearnConfig(
        concept=concept, synonyms=synonyms, preserve=preserve, erased=erased, method=method, steps=steps
    )
    started = time.perf_counter()
    run_unlearning(
        parent,
        cfg,
        out,
        prompts=request_prompts(settings, cfg),
        model_sha=f"bench-{out.name}",
        base_values=base_values,
        progress=False,
    )
    trained = time.perf_counter() - started
    plan = evaluator.plan(concept, synonyms=synonyms, erased=erased)
    result = evaluator.evaluate(parent, base, plan, base_sha256=base_sha)
    return result, trained, time.perf_counter() - started


def single(args) -> None:
    import copy

    settings, base, base_sha, evaluator = _setup(args.eval_samples)
    print(
        f"## One request: erase circle (synonym disc, preserve ring) — {date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, {args.steps} steps, {args.eval_samples} evaluation samples per concept\n"
    )
    print(
        "| method | UA gate | UA held-out | UA synonyms | IRA × base | CRA × base | ring × base | drift | gate | train s | request s (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        walls, last = [], None
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                parent = copy.deepcopy(base)
                last, trained, wall = _request(
                    settings,
                    parent,
                    base,
                    base_sha,
                    evaluator,
                    concept="circle",
                    synonyms=("disc",),
                    preserve=("ring",),
                    erased=(),
                    method=method,
                    steps=args.steps,
                    out=Path(tmp) / f"{method}-{repeat}",
                )
                walls.append(wall)
        c = last.results
        print(
            f"| {method} | {c['forget']['gate']['ua']:.3f} | {c['forget']['heldout']['ua']:.3f} | {c['forget']['synonyms']['ua']:.3f} | "
            f"{c['retain']['ira']['relative']:.3f} | {c['retain']['cra']['relative']:.3f} | "
            f"{c['retain']['per_concept']['ring']['relative']:.3f} | {c['drift']:.4f} | "
            f"{'pass' if last.decision.passed else 'FAIL'} | {trained:.0f} | {statistics.median(walls):.0f} |"
        )


def sequence(args) -> None:
    import copy

    settings, base, base_sha, evaluator = _setup(args.eval_samples)
    print(
        f"## Sequence {' → '.join(SEQUENCE)} — {date.today()}, {platform.machine()}, {os.cpu_count()} cores, {args.steps} steps each\n"
    )
    print("| method | step | erased so far | UA of each erased concept | IRA × base | CRA × base | drift |")
    print("|---|---|---|---|---|---|---|")
    for method in args.methods:
        parent = copy.deepcopy(base)
        erased: tuple[str, ...] = ()
        with tempfile.TemporaryDirectory() as tmp:
            for step, concept in enumerate(SEQUENCE, start=1):
                result, _, _ = _request(
                    settings,
                    parent,
                    base,
                    base_sha,
                    evaluator,
                    concept=concept,
                    synonyms=(),
                    preserve=(),
                    erased=erased,
                    method=method,
                    steps=args.steps,
                    out=Path(tmp) / f"{step}",
                )
                erased = (*erased, concept)
                c = result.results
                ua = {concept: c["forget"]["gate"]["ua"], **{k: v["ua"] for k, v in c["rebound"].items()}}
                print(
                    f"| {method} | {step} | {', '.join(erased)} | {', '.join(f'{k} {v:.2f}' for k, v in ua.items())} | "
                    f"{c['retain']['ira']['relative']:.3f} | {c['retain']['cra']['relative']:.3f} | {c['drift']:.4f} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("single", "sequence"))
    parser.add_argument("--methods", nargs="+", default=["duge", "esd-x"])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--eval-samples", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    single(args) if args.mode == "single" else sequence(args)


if __name__ == "__main__":
    main()
