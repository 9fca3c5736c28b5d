"""`lethe generate | evaluate | unlearn | export`: work on one model, outside the queue.

Every model is named the same way (`--model`): 'shapes' (the shipped base), a diffusers folder, an
`lethe unlearn --out` folder, or `models:/<name>@<alias>` / `models:/<name>/<N>`; all are loaded by
the one function (pipeline/prepare.py `load_parent_model`). Evaluations use the one evaluator built
from the settings (pipeline/evaluator.py), so `settings.policy` holds here as in the flow.
"""

from __future__ import annotations

import time
from pathlib import Path

from flows.cli.common import (
    BadInput,
    add_json,
    empty_folder,
    in_range,
    model_refusals,
    print_json,
    refusals,
    save_picture,
    settings,
    writable_file,
)
from flows.cli.report import add_sampler_options, add_size_options, plan_size, print_evaluation, sampler_from


def _load(config, model: str | None):
    """The model `--model` names (default: the lineage's base), loaded and verified."""
    from pipeline.prepare import load_parent_model

    try:
        return load_parent_model(config, model or config.base_model)
    except model_refusals() as error:
        raise BadInput(str(error)) from None


# ---------------------------------------------------------------- generate
def cmd_generate(args) -> int:
    config = settings()
    out = writable_file(args.out, ".png")
    in_range("n", args.n, 1, 256)
    in_range("scale", args.scale, 1, 32)
    sampler = sampler_from(config, args)
    if not args.prompt.strip():
        raise BadInput("the prompt is empty")
    from unlearning.sampling import PromptError, check_prompt, generate, image_grid, upscale

    loaded = _load(config, args.model)
    pipe = loaded.pipe.to(device=config.resolved_device(), dtype=config.resolved_dtype())
    try:
        check_prompt(pipe.tokenizer, args.prompt)
    except PromptError as error:
        raise BadInput(str(error)) from None
    started = time.perf_counter()
    seeds = [args.seed + k for k in range(args.n)]
    images = generate(
        pipe, [args.prompt] * args.n, seeds, steps=sampler["steps"], guidance_scale=sampler["guidance_scale"]
    )
    save_picture(upscale(image_grid(images, columns=min(args.n, 8)), args.scale), out)
    result = {
        "out": str(out),
        "prompt": args.prompt,
        "model": args.model or config.base_model,
        "seeds": seeds,
        "steps": sampler["steps"],
        "guidance_scale": sampler["guidance_scale"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    if args.json:
        print_json(result)
    else:
        print(
            f"wrote {out} ({args.n} image{'s' if args.n > 1 else ''}, seeds {seeds[0]}..{seeds[-1]}, "
            f"{result['seconds']} s)"
        )
    return 0


def generate_parser(commands) -> None:
    p = commands.add_parser("generate", help="generate an image (a grid when --n > 1)")
    p.add_argument("--prompt", required=True, help="the text prompt")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image k uses seed + k")
    p.add_argument("--n", type=int, default=1, help="how many images (a grid when > 1)")
    add_sampler_options(p)
    p.add_argument("--model", default=None, help="'shapes' (default), a diffusers or unlearn folder, or models:/...")
    p.add_argument("--scale", type=int, default=4, help="nearest-neighbour enlargement of the PNG (default 4)")
    p.add_argument("--out", required=True, help="the PNG to write")
    add_json(p)
    p.set_defaults(func=cmd_generate)


# ---------------------------------------------------------------- evaluate
def _prompts_from_file(path_text: str) -> list[str]:
    path = Path(path_text)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a text file") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise BadInput(f"{path}: no prompts (one per line)")
    return prompts


def _candidate_and_base(config, model: str | None):
    """(candidate, base pipeline, base sha256) for `--model`. A model with a lineage (models:/, an unlearn
    folder) is judged against the base its deltas were trained on; a plain diffusers folder against the
    lineage's base; the base itself against itself (one object: distance 0, FID 0, one sampling pass)."""
    from unlearning.sampling import load_model, model_identity

    candidate = _load(config, model)
    base_model = candidate.base_model if candidate.ancestors else config.base_model
    base_id, base_sha = model_identity(base_model)
    if not candidate.ancestors and candidate.base_sha256 == base_sha:
        return candidate, candidate.pipe, base_sha
    return candidate, load_model(base_model), base_sha


PROBE_IMAGES = 6  # images per probe prompt (--prompt) unless --samples says


def cmd_evaluate(args) -> int:
    config = settings()
    size = plan_size(config, args, "samples")
    prompts = list(args.prompt or []) + (_prompts_from_file(args.prompts_file) if args.prompts_file else [])
    if any(not p.strip() for p in prompts):
        raise BadInput("a prompt is empty")
    report_dir = (
        Path(args.report) if args.report else config.home / "reports" / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if report_dir.exists() and not report_dir.is_dir():
        raise BadInput(f"{report_dir}: exists and is not a folder")
    sampler = sampler_from(config, args)

    from pipeline.evaluate import evaluate_model
    from pipeline.evaluator import Evaluator
    from unlearning.evaluation.checks import probe_prompts
    from unlearning.open_plan import LineageConcepts
    from unlearning.sampling import check_prompt, default_scheduler, generate, use_scheduler

    try:
        # the gate applies when a target is named or a policy is given: settings.policy unless --policy
        evaluator = Evaluator.from_settings(
            config,
            gate=bool(args.policy or args.target),
            policy_path=args.policy,
            size=size,
            sampler=sampler,
            concepts=LineageConcepts(args.target, erased=tuple(args.erased or ())),
        )
        evaluator.plan(args.target, synonyms=tuple(args.synonym or ()), erased=tuple(args.erased or ()))  # refuse early
    except model_refusals() as error:
        raise BadInput(str(error)) from None
    candidate, base, base_sha = _candidate_and_base(config, args.model)
    try:
        for prompt in prompts:
            check_prompt(candidate.pipe.tokenizer, prompt)
        # the sampler the evaluator records (and keys its image cache by): the evaluator holds this same dict
        sampler["scheduler"] = args.scheduler or default_scheduler(candidate.pipe)
        for pipe in {id(candidate.pipe): candidate.pipe, id(base): base}.values():
            use_scheduler(pipe, sampler["scheduler"])
    except model_refusals() as error:
        raise BadInput(str(error)) from None
    probes = []
    if prompts:
        per_prompt = args.samples or PROBE_IMAGES
        seeds = [900_000 + k for _ in prompts for k in range(per_prompt)]
        expanded = [p for p in prompts for _ in range(per_prompt)]
        images = generate(
            candidate.pipe, expanded, seeds, steps=sampler["steps"], guidance_scale=sampler["guidance_scale"]
        )
        probes = probe_prompts(evaluator.world.judges()[0], prompts, images, per_prompt)
    label = args.model or config.base_model
    extra = {
        "model": label,
        "base_model": candidate.base_model if candidate.ancestors else config.base_model,
        "base_sha256": base_sha,
        "sampler": sampler,
        "prompts": probes,
        "report": str(report_dir),
    }
    _, payload = evaluate_model(
        evaluator,
        candidate.pipe,
        base,
        base_sha256=base_sha,
        target=args.target,
        synonyms=tuple(args.synonym or ()),
        erased=tuple(args.erased or ()),
        report_dir=report_dir,
        title=f"Lethe evaluation of {label}",
        extra=extra,
    )
    if args.json:
        print_json(payload)
    else:
        print_evaluation(payload, report_dir / "report.html", probes)
    return 0


def evaluate_parser(commands) -> None:
    p = commands.add_parser("evaluate", help="erosion checks of a model against the base, with a gate")
    p.add_argument(
        "--model", default=None, help="'shapes' (default), a diffusers or unlearn folder, or models:/NAME@ALIAS|/N"
    )
    p.add_argument("--target", default=None, help="the concept that should be gone")
    p.add_argument("--synonym", action="append", help="another name of the target (repeatable)")
    p.add_argument("--erased", action="append", help="a concept erased earlier (repeatable): rebound check")
    p.add_argument("--prompt", action="append", help="probe this prompt too (repeatable)")
    p.add_argument("--prompts-file", default=None, help="probe prompts, one per line")
    add_size_options(p, "samples")
    p.add_argument(
        "--policy",
        default=None,
        help="gate policy YAML (default: settings.policy, or the world's shipped one, when --target)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        choices=("ddim", "dpm++", "euler", "pndm"),
        help="sampler (default: ddim; a flow-matching model's (SD3, FLUX) own euler)",
    )
    add_sampler_options(p)
    p.add_argument("--report", default=None, help="report folder (default <home>/reports/evaluate-TIME)")
    add_json(p)
    p.set_defaults(func=cmd_evaluate)


# ---------------------------------------------------------------- unlearn
def cmd_unlearn(args) -> int:
    config = settings()
    from registry.requests import RequestSpec

    # The same request type and checks as `lethe submit`: fields, limits and the lineage's world.
    options = {
        k: v
        for k, v in {
            "params": args.params,
            "steps": args.steps,
            "seed": args.seed,
            "gradient_surgery": args.gradient_surgery or None,
            "domain_correction": args.domain_correction or None,
        }.items()
        if v is not None
    }
    spec = RequestSpec(
        concept=args.concept,
        requester="lethe unlearn",
        synonyms=tuple(args.synonym or ()),
        anchor=args.anchor or "",
        preserve=tuple(args.preserve or ()),
        method=args.method,
        options=options,
    )
    from pipeline.intake import check_requests
    from pipeline.world import world_for

    try:
        check_requests([spec], world_for(config))
    except refusals() as error:
        raise BadInput(str(error)) from None
    from unlearning.config import UnlearnConfig
    from unlearning.model_folder import CHECKPOINT_FILE, SUMMARY_FILE

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out}: exists and is not a folder")
    if (
        out.is_dir()
        and any(out.iterdir())
        and not (out / CHECKPOINT_FILE).is_file()
        and not (out / SUMMARY_FILE).is_file()
    ):
        raise BadInput(f"{out}: is not empty; choose another --out (a folder with a checkpoint resumes)")
    size = plan_size(config, args, "eval-samples")

    from pipeline.evaluator import Evaluator
    from pipeline.unlearn import lineage_erased, unlearn_and_evaluate
    from unlearning.open_plan import LineageConcepts

    loaded = _load(config, args.model)
    try:
        # the parent's erased concepts are the lineage's: replayed while training, judged for rebound
        erased = lineage_erased(tuple(loaded.erased), tuple(args.erased or ()))
        unlearn_config = UnlearnConfig.from_request(
            spec, erased=erased, compile=args.compile or None, data_steps=config.unlearn_data_steps
        )
        unlearn_config.validate()
        concepts = LineageConcepts(spec.concept, spec.anchor, tuple(spec.preserve), tuple(erased))
        evaluator = Evaluator.from_settings(config, size=size, concepts=concepts)  # an open world's judge names them
        evaluator.plan(spec.concept, synonyms=tuple(spec.synonyms), erased=tuple(erased))  # refuse before training
    except model_refusals() as error:
        raise BadInput(str(error)) from None
    out.mkdir(parents=True, exist_ok=True)
    step = unlearn_and_evaluate(
        config,
        evaluator,
        unlearn_config,
        loaded,
        out,
        report_dir=out / "report",
        title=f"Lethe: erase {unlearn_config.concept} ({unlearn_config.method})",
        self_contained=True,
        progress=not args.json,
        metadata={"parent_model": args.model or config.base_model},
    )
    summary, payload = step.summary, step.payload
    result = {
        "out": str(out),
        "delta": summary["delta"],
        "seconds": summary["seconds"],
        "reused": bool(summary.get("reused")),
        "mining": summary.get("mining"),
        "evaluation": payload,
    }
    if args.json:
        print_json(result)
    else:
        print(
            f"wrote {summary['delta']} ({summary['trained_parameters']} trained parameters, {summary['seconds']} s"
            + (", finished before: not retrained" if summary.get("reused") else "")
            + ")"
        )
        if mining := summary.get("mining"):
            found = ", ".join(f'"{m["prompt"]}"' for m in mining["mined"][:5]) or "none"
            print(
                f"mined {len(mining['mined'])} of {mining['prompts']} broad prompts the parent draws "
                f"{args.concept} for ({mining['seeds']} seeds each; background {mining['background']:.3f}): {found}"
            )
        print_evaluation(payload, out / "report" / "report.html")
    return 0


def unlearn_parser(commands) -> None:
    from unlearning.methods import DEFAULT_METHOD, METHOD_NAMES, PARAMETER_SETS

    p = commands.add_parser("unlearn", help="remove one concept from a model (one decremental step) and evaluate it")
    p.add_argument("--concept", required=True, help="the concept to remove")
    p.add_argument("--synonym", action="append", help="another name of the concept (repeatable)")
    p.add_argument(
        "--anchor",
        default=None,
        help="what the concept should become (default: another concept of its domain: square, solid)",
    )
    p.add_argument("--preserve", action="append", help="a related concept to keep (repeatable)")
    p.add_argument(
        "--erased",
        action="append",
        help="a concept erased earlier (repeatable): replayed, and judged for rebound. Default: what --model "
        "erased (an unlearn folder or a version knows); naming others than it erased is refused",
    )
    p.add_argument("--method", default=DEFAULT_METHOD, help=f"{', '.join(METHOD_NAMES)} (default {DEFAULT_METHOD})")
    p.add_argument("--params", default=None, help=f"{', '.join(PARAMETER_SETS)} (default: the method's own)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the method's)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--gradient-surgery",
        action="store_true",
        help="project the forget gradient off the preserve gradient on conflict",
    )
    p.add_argument(
        "--domain-correction",
        action="store_true",
        help="duge only: a latent discriminator makes target outputs look like anchor outputs (DoCo)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument(
        "--model",
        default=None,
        help="the parent: 'shapes', a diffusers folder, an unlearn --out folder, or models:/...",
    )
    add_size_options(p, "eval-samples")
    p.add_argument("--out", required=True, help="output folder (new or empty; a folder with a checkpoint resumes)")
    add_json(p)
    p.set_defaults(func=cmd_unlearn)


# ---------------------------------------------------------------- export
def cmd_export(args) -> int:
    config = settings()
    out = empty_folder(args.dir)
    uri = args.version if args.version.startswith("models:/") else f"models:/{config.model_name}/{args.version}"
    loaded = _load(config, uri)
    loaded.pipe.save_pretrained(out, safe_serialization=True)
    result = {
        "out": str(out),
        "uri": uri,
        "version": loaded.version,
        "erased": loaded.erased,
        "base_model": loaded.base_model,
    }
    print_json(result) if args.json else print(f"wrote {uri} (erased: {', '.join(loaded.erased)}) to {out}")
    return 0


def export_parser(commands) -> None:
    p = commands.add_parser("export", help="write a registered version as a complete diffusers directory")
    p.add_argument("version", help="version number or models:/ URI")
    p.add_argument("dir", help="an empty or new folder")
    add_json(p)
    p.set_defaults(func=cmd_export)


PARSERS = (generate_parser, evaluate_parser, unlearn_parser, export_parser)
