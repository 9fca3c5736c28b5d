"""Benchmark: unlearning on the shapes world (CPU) — one request per method, and a sequence.

    .venv/bin/python bench/methods.py single   [--methods continual-uce duge uce esd-x] [--repeats 1]
    .venv/bin/python bench/methods.py sequence [--methods continual-uce uce esd-x]
    (either: [--steps N] [--hyper NAME=VALUE ...] for every method given)

Every run goes through the pipeline's own step (pipeline/unlearn.py `unlearn_and_evaluate`, as the request
flow and `lethe unlearn` do) with the evaluator the settings build (the gate's plan: 96 images per forget and
rebound set, 24 per retained concept; the shipped policy), methods side by side on the same prompts
and seeds. Caches live under a temporary LETHE_HOME unless one is set.

`single`: erase `circle` (synonym `disc`, preserve `ring`) from the base with each method.
`sequence`: erase circle, striped, star, dotted, heart, gradient in turn, each from the previous step's
model (an `lethe unlearn --out` folder: deltas and lineage terms chained), the UA of every erased
concept re-measured after every step.

UA is measured where the base draws the concept (k/n and the Wilson 95 % interval). Prints Markdown
tables (paste them into bench/RESULTS.md with the date and machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import method_specs  # noqa: E402  (bench/method_specs.py: this folder is first on sys.path)

SEQUENCE = ("circle", "striped", "star", "dotted", "heart", "gradient")


def _setup():
    from pipeline.evaluator import Evaluator
    from pipeline.settings import load_settings
    from unlearning.sampling import load_model

    os.environ.setdefault("LETHE_HOME", str(Path(tempfile.gettempdir()) / "lethe-bench-home"))
    settings = load_settings()
    return settings, Evaluator.from_settings(settings), load_model("shapes")


def steps_of(args) -> dict:
    """`--steps` as an UnlearnConfig field, where given."""
    return {"steps": args.steps} if args.steps is not None else {}


def ua(entry: dict) -> str:
    drawn = entry["where_base_draws"]
    low, high = drawn["wilson"]
    return f"{drawn['ua']:.3f} ({drawn['k']}/{drawn['n']}, [{low:.2f}, {high:.2f}])"


def single(args) -> None:
    settings, evaluator, base = _setup()
    print(
        f"## One request: erase circle (synonym disc, preserve ring) — {date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores\n"
    )
    print(
        "UA where the base draws circle: rate (erased/n, Wilson 95 %). "
        "Relative figures: candidate / base, same images.\n"
    )
    print(
        "| method | UA gate | UA held-out | UA synonyms | IRA × | CRA × | ring × | retention | FID | judges disagree "
        "| drift | gate | train s | request s (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        walls, payload, trained = [], None, 0.0
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                payload, trained, evaluated = method_specs.request(
                    settings,
                    evaluator,
                    base,
                    "shapes",
                    Path(tmp) / f"{method}-{repeat}",
                    concept="circle",
                    synonyms=("disc",),
                    preserve=("ring",),
                    method=method,
                    hyper=args.hyper or {},
                    **steps_of(args),
                )
                walls.append(trained + evaluated)
        c, decision = payload["checks"], payload["decision"]
        retain = c["retain"]
        print(
            f"| {method} | {ua(c['forget']['gate'])} | {ua(c['forget']['heldout'])} | {ua(c['forget']['synonyms'])} | "
            f"{retain['ira']['relative']:.3f} | {retain['cra']['relative']:.3f} | "
            f"{retain['per_concept']['ring']['relative']:.3f} | {c['retention']['distance']:.3f} | "
            f"{c['fid']['fid']:.2f} | "
            f"{c['judges']['candidate']['forget_disagreement']:.3f} | {c['drift']:.3f} | "
            f"{'pass' if decision['passed'] else 'FAIL'} | {trained:.0f} | {statistics.median(walls):.0f} |",
            flush=True,
        )
        if not decision["passed"]:
            print(f"|   | {'; '.join(decision['reasons'])[:400]} |||||||||||||", flush=True)


def sequence(args) -> None:
    settings, evaluator, base = _setup()
    print(f"## Sequence {' → '.join(SEQUENCE)} — {date.today()}, {platform.machine()}, {os.cpu_count()} cores\n")
    print(
        "| method | step | target UA | erased earlier: UA each (where the base draws it) | IRA × | CRA × "
        "| retention | FID "
        "| gate | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        parent, erased = "shapes", ()
        with tempfile.TemporaryDirectory() as tmp:
            for step, concept in enumerate(SEQUENCE, start=1):
                out = Path(tmp) / f"{step}-{concept}"
                payload, trained, evaluated = method_specs.request(
                    settings,
                    evaluator,
                    base,
                    parent,
                    out,
                    concept=concept,
                    erased=erased,
                    method=method,
                    hyper=args.hyper or {},
                    **steps_of(args),
                )
                wall = trained + evaluated
                c, decision = payload["checks"], payload["decision"]
                rebound = ", ".join(f"{k} {v['where_base_draws']['ua']:.2f}" for k, v in c["rebound"].items()) or "—"
                print(
                    f"| {method} | {step} | {concept} {ua(c['forget']['gate'])} | {rebound} | "
                    f"{c['retain']['ira']['relative']:.3f} | {c['retain']['cra']['relative']:.3f} | "
                    f"{c['retention']['distance']:.3f} | {c['fid']['fid']:.2f} | "
                    f"{'pass' if decision['passed'] else 'FAIL'} | "
                    f"{wall:.0f} |",
                    flush=True,
                )
                parent, erased = str(out), (*erased, concept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("single", "sequence"))
    parser.add_argument("--methods", nargs="+", default=["continual-uce", "duge", "uce", "esd-x"])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: each method's)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--hyper",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="method hyper-parameters (numbers), e.g. erase_scale=3 (every method given gets them)",
    )
    args = parser.parse_args()
    try:
        args.hyper = {k: float(v) for k, v in (item.split("=", 1) for item in args.hyper)}
    except ValueError:
        parser.error("--hyper takes NAME=NUMBER pairs")
    single(args) if args.mode == "single" else sequence(args)


if __name__ == "__main__":
    main()
