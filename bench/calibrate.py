"""Benchmark: the noise floor of the gate — the shapes base against itself with other seeds, at the
gate's n — and the policy bounds it implies at stated multiples.

    .venv/bin/python bench/calibrate.py [--repeats 4] [--target circle] [--sweep-only | --no-sweep]

In the settings' world: the shapes world, or the open world with its CLIP judge (LETHE_WORLD=open,
LETHE_JUDGE_MODEL, LETHE_JUDGE_OBJECTS, LETHE_JUDGE_STYLES), built as the pipeline builds it for a first
request of the target; the open world has one judge, so its disagreement is not measured there.

The first request's plan (target `circle`: 3 forget sets of 96 images, 13 retained concepts of 24) is
sampled from the base with its own seeds and with `--repeats` other seed sets (same prompts). Each other
set is judged as if it were a candidate against the first, so every retain metric shows what chance
alone gives: retention distance (the distance of two independent draws of a prompt), FID/KID in the
detector's features, per-concept and IRA/CRA accuracy relative to the base, and how often the two
judges disagree. The bounds, the multiples and these measurements go into shapes_policy.yaml and
bench/RESULTS.md.

Multiples (stated before looking at any candidate):
- retention.distance ≤ 0.5 × the mean distance of independent draws (a candidate's retained images
  must be closer to the base's than half-way to an unrelated sample);
- fid.fid ≤ 2 × the mean base-vs-base FID at this n;
- retain.per_concept.*.relative ≥ 1 − 3σ and retain.ira/cra.relative and retain.by_domain.<head>.relative
  ≥ 1 − 3σ, σ the standard deviation of those ratios between seed sets (three standard deviations of pure
  chance). IRA is one head for an object target and the other for a style target, so run it with an
  object and with a style target (`--target circle`, `--target striped`); the policy bounds each head
  at the larger of its two σ;
- judges.candidate.forget_disagreement ≤ 3 × the judges' disagreement on the base's forget images;
- the sweep's broad retention (unlearning/evaluation/sweep.py: the vocabulary prompts, `--repeats` other
  seed sets of the base judged as candidates against its own): sweep.retention.distance ≤ 0.5 × the
  distance of independent draws and sweep.retention.fid ≤ 2 × base-vs-base FID (the retain set's
  multiples, carried over), sweep.retention.max_shift ≤ 2 × the base-vs-base total variation of the
  judge's top-1 distribution (the worst head; a distribution distance, bounded like FID). The same runs
  count the relocations chance alone confirms (the corrected test should confirm none).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from dataclasses import replace
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="other seed sets")
    parser.add_argument("--target", default="circle")
    parser.add_argument("--json", default=None, help="also write the measurements here")
    parser.add_argument("--sweep-only", action="store_true", help="only the sweep's noise floor (not the plan's)")
    parser.add_argument("--no-sweep", action="store_true", help="only the plan's noise floor (not the sweep's)")
    args = parser.parse_args()

    from pipeline.evaluator import Evaluator
    from pipeline.settings import load_settings
    from unlearning.evaluation.cache import generate_cached
    from unlearning.evaluation.checks import run_checks
    from unlearning.open_plan import LineageConcepts
    from unlearning.sampling import load_model, model_identity

    os.environ.setdefault("LETHE_HOME", str(Path(tempfile.gettempdir()) / "lethe-bench-home"))
    settings = load_settings()
    # The settings' world (shapes, or open with its judge, LETHE_WORLD), built as the pipeline builds it for a
    # first request of this target (pipeline/unlearn.py): an open world's judge must name the target.
    evaluator = Evaluator.from_settings(settings, gate=False, concepts=LineageConcepts(args.target))
    base, base_sha = load_model(settings.base_model), model_identity(settings.base_model)[1]
    judges = evaluator.world.judges()
    print(f"world {type(evaluator.world).__name__}, judges {[j.name for j in judges]}", flush=True)

    def images(size):
        plan = evaluator.world.plan(args.target, synonyms=(), erased=(), size=size)
        pairs = [(c.prompt, c.seed) for c in plan.cases]
        found, _ = generate_cached(
            base,
            [p for p, _ in pairs],
            [s for _, s in pairs],
            model_sha256=base_sha,
            sampler=evaluator.sampler,
            cache=evaluator.cache,
        )
        return plan, found

    if args.sweep_only:
        sweep_floor, sweep_bounds, sweep_rows = calibrate_sweep(evaluator, base, base_sha, args)
        if args.json:
            document = {"sweep": {"floor": sweep_floor, "bounds": sweep_bounds, "rows": sweep_rows}}
            Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        return
    plan, reference = images(evaluator.size)
    rows = []
    for repeat in range(1, args.repeats + 1):
        other_plan, other = images(replace(evaluator.size, seed_offset=1000 * repeat))
        assert [c.prompt for c in other_plan.cases] == [c.prompt for c in plan.cases]
        checks = run_checks(plan, judges, other, reference)
        per_concept = {c: v["relative"] for c, v in checks["retain"]["per_concept"].items()}
        rows.append(
            {
                "retention": checks["retention"]["distance"],
                "fid": checks["fid"]["fid"],
                "kid": checks["fid"]["kid"],
                "ira": checks["retain"]["ira"]["relative"],
                "cra": checks["retain"]["cra"]["relative"],
                **{f"{d}_head": v["relative"] for d, v in checks["retain"]["by_domain"].items()},
                "per_concept": per_concept,
                # None with one judge (an open world): there is no second judge to disagree with
                "judges_forget_disagreement_base": checks["judges"]["base"]["forget_disagreement"]
                if "judges" in checks
                else None,
                "base_detection": {k: 1 - v["base_ua"] for k, v in checks["forget"].items()},
            }
        )
        print(f"seed set {repeat}: {json.dumps({k: v for k, v in rows[-1].items() if k != 'per_concept'})}", flush=True)

    def mean(key):
        return statistics.mean(r[key] for r in rows)

    def sd(values):
        return statistics.stdev(values) if len(values) > 1 else float("nan")

    concept_ratios = [v for r in rows for v in r["per_concept"].values()]
    floor = {
        "retention_independent_draws": mean("retention"),
        "fid": mean("fid"),
        "kid": mean("kid"),
        "per_concept_sd": sd(concept_ratios),
        "ira_sd": sd([r["ira"] for r in rows]),
        "cra_sd": sd([r["cra"] for r in rows]),
        **{f"{d}_head_sd": sd([r[f"{d}_head"] for r in rows]) for d in ("object", "style")},
        "judges_forget_disagreement_base": mean("judges_forget_disagreement_base") if len(judges) > 1 else None,
    }
    bounds = {
        "retention.distance": round(0.5 * floor["retention_independent_draws"], 3),
        "fid.fid": round(2 * floor["fid"], 3),
        "retain.per_concept.*.relative": round(1 - 3 * floor["per_concept_sd"], 3),
        "retain.ira.relative": round(1 - 3 * floor["ira_sd"], 3),
        "retain.cra.relative": round(1 - 3 * floor["cra_sd"], 3),
        **{f"retain.by_domain.{d}.relative": round(1 - 3 * floor[f"{d}_head_sd"], 3) for d in ("object", "style")},
    }
    if floor["judges_forget_disagreement_base"] is not None:
        bounds["judges.candidate.forget_disagreement"] = round(3 * floor["judges_forget_disagreement_base"], 3)

    def per_set(key: str, spec: str) -> str:
        return ", ".join(format(r[key], spec) for r in rows)

    print(
        f"\n## Gate calibration: the base against itself — {date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores\n"
    )
    print(
        f"Plan of the first request (target {args.target}): {len(plan.cases)} images; {args.repeats} other seed sets; "
        f"sampler {evaluator.sampler}.\n"
    )
    print("| measure | mean over seed sets | per set | multiple | bound |")
    print("|---|---|---|---|---|")
    print(
        f"| retention distance, independent draws | {floor['retention_independent_draws']:.4f} | "
        f"{per_set('retention', '.4f')} | × 0.5 | max {bounds['retention.distance']} |"
    )
    print(
        f"| FID (judge features), n = {len([c for c in plan.cases if c.group.startswith('retain/')])} | "
        f"{floor['fid']:.3f} | {per_set('fid', '.3f')} | × 2 | max {bounds['fid.fid']} |"
    )
    print(f"| KID | {floor['kid']:.4f} | {per_set('kid', '.4f')} | reported, not gated | — |")
    print(
        f"| per-concept relative accuracy, σ | {floor['per_concept_sd']:.4f} | range {min(concept_ratios):.3f}–"
        f"{max(concept_ratios):.3f} | 1 − 3σ | min {bounds['retain.per_concept.*.relative']} |"
    )
    print(
        f"| IRA relative, σ | {floor['ira_sd']:.4f} | {per_set('ira', '.3f')} | 1 − 3σ | "
        f"min {bounds['retain.ira.relative']} |"
    )
    print(
        f"| CRA relative, σ | {floor['cra_sd']:.4f} | {per_set('cra', '.3f')} | 1 − 3σ | "
        f"min {bounds['retain.cra.relative']} |"
    )
    for d in ("object", "style"):
        print(
            f"| {d} head relative (retained {d}s), σ | {floor[f'{d}_head_sd']:.4f} | {per_set(f'{d}_head', '.3f')} | "
            f"1 − 3σ | min {bounds[f'retain.by_domain.{d}.relative']} |"
        )
    if floor["judges_forget_disagreement_base"] is None:
        print("| judges' disagreement on the base's forget images | not measured (one judge) | — | × 3 | — |")
    else:
        print(
            f"| judges' disagreement on the base's forget images | {floor['judges_forget_disagreement_base']:.4f} | "
            f"{per_set('judges_forget_disagreement_base', '.3f')} | × 3 | "
            f"max {bounds['judges.candidate.forget_disagreement']} |"
        )
    sweep_floor, sweep_bounds, sweep_rows = (
        calibrate_sweep(evaluator, base, base_sha, args) if not args.no_sweep else (None, None, None)
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "floor": floor,
                    "bounds": bounds,
                    "rows": rows,
                    "sweep": {"floor": sweep_floor, "bounds": sweep_bounds, "rows": sweep_rows},
                },
                indent=2,
            )
            + "\n"
        )


def calibrate_sweep(evaluator, base, base_sha: str, args) -> tuple[dict, dict, list]:
    """The sweep's noise floor: the base's images of the sweep prompts on `--repeats` other seed sets, each
    judged as a candidate against the base's own (module docstring); prints its table."""
    from unlearning.evaluation.sweep import run_sweep, sweep_prompts

    size = evaluator.sweep
    world = evaluator.world
    names = {args.target: world.names_of(args.target)}
    prompts = sweep_prompts(base.tokenizer, names, size)
    rows = []
    for repeat in range(1, args.repeats + 1):
        results, _ = run_sweep(
            base,
            base,
            world.judges()[0],
            {args.target: world.head_of(args.target)},
            prompts,
            size=replace(size, seed_offset=500 * repeat),
            sampler=evaluator.sampler,
            base_sha256=base_sha,
            cache=evaluator.cache,
        )
        broad = results["retention"]
        rows.append(
            {
                "distance": broad["distance"],
                "fid": broad["fid"],
                "max_shift": broad["max_shift"],
                "shift": broad["shift"],
                "relocations": results["relocations"],
                "tested": results["concepts"][args.target]["confirmed"],
                "leak_ua": results["concepts"][args.target]["leak"]["ua"],
                "leak_n": results["concepts"][args.target]["leak"]["n"],
            }
        )
        print(f"sweep seed set {repeat}: {json.dumps(rows[-1])}", flush=True)
    floor = {key: statistics.mean(r[key] for r in rows) for key in ("distance", "fid", "max_shift")}
    bounds = {
        "sweep.retention.distance": round(0.5 * floor["distance"], 3),
        "sweep.retention.fid": round(2 * floor["fid"], 3),
        "sweep.retention.max_shift": round(2 * floor["max_shift"], 3),
    }
    n = next(iter(rows))["leak_n"] if rows else 0
    print(
        f"\nSweep of the first request (target {args.target}): {len(prompts)} prompts × {size.screen_seeds} seeds "
        f"({size.vocabulary_prompts} vocabulary prompts: the broad retention's images); {args.repeats} other "
        "seed sets.\n"
    )
    print("| measure | mean over seed sets | per set | multiple | bound |")
    print("|---|---|---|---|---|")
    for key, label, multiple in (
        ("distance", "broad retention distance, independent draws", "× 0.5"),
        ("fid", "broad FID (judge features)", "× 2"),
        ("max_shift", "shift of the judge's top-1 distribution (worst head, total variation)", "× 2"),
    ):
        per_set = ", ".join(f"{r[key]:.4f}" for r in rows)
        print(f"| {label} | {floor[key]:.4f} | {per_set} | {multiple} | max {bounds['sweep.retention.' + key]} |")
    chance = ", ".join(f"{r['relocations']} ({r['tested']})" for r in rows)
    print(f"| relocations confirmed by chance (tested) | — | {chance} | — | expected 0 |")
    own_leak = ", ".join(f"{r['leak_ua']:.3f}" for r in rows)
    print(f"| the base's own leak UA on its other seeds (n ≈ {n}) | — | {own_leak} | — | reported |")
    return floor, bounds, rows


if __name__ == "__main__":
    main()
