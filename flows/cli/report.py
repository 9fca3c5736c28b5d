"""What the model commands (flows/cli/model.py) share beyond loading: the sampler and plan-size options
they parse, and the evaluation's headline numbers they print (the report has everything)."""

from __future__ import annotations

from flows.cli.common import in_range


def sampler_from(config, args) -> dict:
    in_range("steps", args.steps, 1, 1000)
    return {
        "scheduler": getattr(args, "scheduler", None) or "ddim",  # `lethe evaluate` names a flow model's own
        "steps": config.sample_steps if args.steps is None else args.steps,
        "guidance_scale": config.guidance_scale if args.guidance is None else args.guidance,
    }


def add_sampler_options(p) -> None:
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: settings.sample_steps)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")


def plan_size(config, args, samples_flag: str):
    """The plan's size: `--samples N` makes every set N images (a quick look); `--forget-images` /
    `--retain-images` set one kind; the rest (the retain rule's fresh seeds too) come from the settings."""
    from unlearning.evaluation.plan import PlanSize

    quick = getattr(args, samples_flag.replace("-", "_"))
    for name, value in (
        (samples_flag, quick),
        ("forget-images", args.forget_images),
        ("retain-images", args.retain_images),
    ):
        in_range(name, value, 1, 600)
    return PlanSize(
        forget_images=args.forget_images or quick or config.eval_forget_images,
        retain_images=args.retain_images or quick or config.eval_retain_images,
        retain_head_images=0 if quick else config.eval_retain_head_images,
        retain_confirm_seeds=config.eval_retain_confirm_seeds,
    )


def add_size_options(p, samples_flag: str) -> None:
    p.add_argument(
        f"--{samples_flag}", type=int, default=None, help="images in every set: a quick look (the gate refuses too few)"
    )
    p.add_argument("--forget-images", type=int, default=None, help="images per forget/rebound set (default: settings)")
    p.add_argument("--retain-images", type=int, default=None, help="images per retained concept (default: settings)")


def print_evaluation(payload: dict, html_path, probes=()) -> None:
    """The evaluation's headline numbers, one line each (the report has everything)."""
    checks = payload["checks"]

    def number(value, spec: str = ".2f") -> str:  # the payload is JSON: an undefined number is None
        return "-" if value is None else format(value, spec)

    def ua(entry: dict) -> str:  # UA where the base draws the concept, with its counts and Wilson interval
        drawn = entry["where_base_draws"]
        low, high = drawn["wilson"]
        return f"{number(drawn['ua'], '.3f')} ({drawn['k']}/{drawn['n']}, 95% [{number(low)}, {number(high)}])"

    for kind, entry in checks.get("forget", {}).items():
        print(f"forget UA      {kind:9s} {ua(entry)}   all images {number(entry['ua'], '.3f')} of {entry['n']}")
    for concept, entry in checks.get("rebound", {}).items():
        print(f"rebound UA     {concept:9s} {ua(entry)}")
    retain = checks["retain"]

    def relative(entry: dict) -> str:
        low, high = entry["relative_bootstrap"]
        return (
            f"{number(entry['accuracy'], '.3f')} ({number(entry['relative'], '.3f')} x base, "
            f"95% [{number(low)}, {number(high)}], n {entry['n']})"
        )

    print(f"retain         IRA {relative(retain['ira'])}  CRA {relative(retain['cra'])}")
    heads = "  ".join(f"{domain}s {relative(entry)}" for domain, entry in retain.get("by_domain", {}).items())
    print(f"retain by head {heads}")

    def stage(entry: dict) -> str:  # a retain stage: the candidate's count against the base's, and their ratio
        n = entry["n"]
        return f"{entry['candidate']}/{n} vs base {entry['base']}/{n} (x{number(entry['relative'], '.3f')})"

    concepts = retain.get("per_concept", {})
    for concept, entry in concepts.items():  # drawn again on fresh seeds: the screen failed its bound
        if entry.get("decided_by") == "pooled":
            print(
                f"retain concept {concept:9s} x{number(entry['relative'], '.3f')} pooled ({entry['k']}/{entry['n']} "
                f"vs base {entry['base_k']}/{entry['n']}): screen {stage(entry['screen'])} below "
                f"{entry['screen_bound']}, fresh seeds {stage(entry['fresh'])}"
            )
    ranked = sorted(
        (entry["relative"], concept) for concept, entry in concepts.items() if entry["relative"] is not None
    )
    if ranked:
        pooled = [c for c, entry in concepts.items() if entry.get("decided_by") == "pooled"]
        print(
            f"retain concept lowest x{ranked[0][0]:.3f} ({ranked[0][1]}) of {len(concepts)}; "
            f"drawn again on fresh seeds: {', '.join(pooled) or 'none'}"
        )
    print(
        f"retention      distance {checks['retention']['distance']:.4f}   "
        f"FID {checks['fid']['fid']:.3f}  KID {checks['fid']['kid']:.4f}"
    )
    print(
        f"alignment      {checks['alignment']['candidate']:.3f} (base {checks['alignment']['base']:.3f})"
        + (f"   drift {checks['drift']:.4f}" if checks.get("drift") is not None else "")
    )
    if "judges" in checks:
        agreement = checks["judges"]["candidate"]
        print(
            f"judges         agree on {agreement['overall']:.3f} of the candidate's images"
            + (
                f"; disagree on {agreement['forget_disagreement']:.3f} of the forget images"
                if "forget_disagreement" in agreement
                else ""
            )
        )
    for concept, entry in checks.get("sweep", {}).get("concepts", {}).items():
        leak = entry["leak"]
        print(
            f"sweep          {concept:9s} relocated on {entry['relocations']} of the {entry['confirmed']} prompts "
            f"re-tested on fresh seeds; leak UA {number(leak.get('ua'), '.3f')} ({leak.get('k', 0)}/"
            f"{leak.get('n', 0)}) on the {leak.get('prompts_drawn', 0)} prompts where the base draws it"
        )
    if "retention" in checks.get("sweep", {}):
        broad = checks["sweep"]["retention"]
        print(
            f"broad          distance {broad['distance']:.4f}   FID {broad['fid']:.3f}   "
            f"judge shift {broad['max_shift']:.3f} (n {broad['n']})"
        )
    for concept, entry in checks.get("attack", {}).items():
        low, high = entry.get("wilson") or (None, None)
        print(
            f"attack ASR     {concept:9s} {number(entry.get('asr'), '.3f')} ({entry.get('k', 0)}/{entry.get('n', 0)},"
            f" 95% [{number(low)}, {number(high)}]); base {entry.get('base', {}).get('k', '-')}/"
            f"{entry.get('base', {}).get('n', '-')}"
        )
    for probe in probes:
        tops = "  ".join(
            f"{head}: {max(rates, key=rates.get)} {max(rates.values()):.2f}" for head, rates in probe["top1"].items()
        )
        print(f"prompt         {probe['prompt']!r} ({probe['samples']} samples)  {tops}")
    decision = payload.get("decision")
    if decision is not None:
        print("gate           " + ("PASSED" if decision["passed"] else "FAILED: " + "; ".join(decision["reasons"])))
    print(f"report         {html_path}")
