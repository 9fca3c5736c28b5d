"""`lethe world train | eval | export`: the embedded shapes world itself."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flows.cli.common import (
    BadInput,
    Parser,
    add_json,
    empty_folder,
    in_range,
    model_refusals,
    print_json,
    save_picture,
    settings,
)


def cmd_world_train(args) -> int:
    config = settings()
    from dataclasses import replace

    from unlearning.shapes.shipped import WEIGHTS_DIR
    from unlearning.shapes.train import STAGES, WorldTrainConfig, train_world

    overrides = {k: v for k, v in {"seed": args.seed, "unet_steps": args.unet_steps}.items() if v is not None}
    if any(v < 0 for v in overrides.values()) or overrides.get("unet_steps", 1) == 0:
        raise BadInput("--seed must be >= 0 and --unet-steps > 0")
    if args.unet_init:
        if not (Path(args.unet_init) / "config.json").is_file():
            raise BadInput(f"--unet-init {args.unet_init}: not a diffusers UNet folder (no config.json)")
        overrides["unet_init"] = str(Path(args.unet_init).resolve())
    world_config = replace(WorldTrainConfig(), **overrides)
    weights_dir = Path(args.weights_dir) if args.weights_dir else WEIGHTS_DIR
    stages = tuple(args.stage) if args.stage else STAGES
    started = time.perf_counter()
    try:
        summary = train_world(world_config, weights_dir, config.home / "world-train", stages=stages, force=args.force)
    except ValueError as error:  # a checkpoint from other options
        raise BadInput(str(error)) from None
    summary["wall_seconds_this_run"] = round(time.perf_counter() - started, 1)
    summary["weights_dir"] = str(weights_dir)
    if args.json:
        print_json(summary)
    else:
        for stage, result in summary["stages"].items():
            print(f"{stage:16s} {json.dumps(result)}")
        print(f"weights in {weights_dir} ({summary['wall_seconds_this_run']} s this run)")
    return 0


def _format_accuracy(row: dict, heads=("object", "style", "colour")) -> str:
    return "  ".join(f"{h} {row[h]:.3f}" for h in heads if h in row)


def cmd_world_eval(args) -> int:
    config = settings()
    in_range("colours", args.colours, 1, 6)
    in_range("steps", args.steps, 1, 1000)
    steps = config.sample_steps if args.steps is None else args.steps
    guidance = config.guidance_scale if args.guidance is None else args.guidance
    report_dir = Path(args.report) if args.report else config.home / "reports" / "world"

    from pipeline.prepare import load_parent_model
    from unlearning.shapes.judge import shapes_judges
    from unlearning.shapes.world_eval import combination_grid, evaluate_world

    try:
        judges = shapes_judges()
        # the one loader: a base, an unlearn folder (its deltas chained, its base's sha256 checked), models:/
        loaded = load_parent_model(config, args.model or config.base_model)
    except model_refusals() as error:
        raise BadInput(str(error)) from None
    pipe = loaded.pipe.to(device=config.resolved_device(), dtype=config.resolved_dtype())
    report_dir.mkdir(parents=True, exist_ok=True)
    numbers, pictures = evaluate_world(
        pipe, judges, steps=steps, guidance_scale=guidance, colours_per_combination=args.colours
    )
    for split, images in pictures.items():
        save_picture(combination_grid(images, args.colours), report_dir / f"grid-{split}.png")
    numbers["report"] = str(report_dir)
    (report_dir / "world-eval.json").write_text(json.dumps(numbers, indent=2) + "\n")
    if args.json:
        print_json(numbers)
        return 0
    for judge, rows in numbers["judges"].items():
        print(f"{judge + ', clean renders':34s}{_format_accuracy(rows['clean'])}")
        print(f"{judge + ', degraded renders':34s}{_format_accuracy(rows['degraded'])}")
    for split, row in numbers["base"].items():
        print(
            f"base, {split:28s}{_format_accuracy(row)}  "
            f"({row['images']} images; judges agree on {row['judge_agreement']:.3f})"
        )
    print(f"targets met: {json.dumps(numbers['meets_targets'])}")
    print(f"grids and JSON in {report_dir} ({numbers['wall_seconds']} s)")
    return 0


def cmd_world_export(args) -> int:
    out = empty_folder(args.dir)
    from unlearning.shapes.model import export_diffusers, load_shapes_pipeline

    try:
        pipe = load_shapes_pipeline(device="cpu")  # fp32 on disk, whatever the serving dtype
    except FileNotFoundError as error:
        raise BadInput(str(error)) from None
    export_diffusers(pipe, out)
    result = {"out": str(out), "loads_with": "diffusers.StableDiffusionPipeline.from_pretrained"}
    print_json(result) if args.json else print(f"wrote a diffusers directory to {out}")
    return 0


def world_parser(commands) -> None:
    world = commands.add_parser("world", help="the embedded shapes world: train, eval, export")
    actions = world.add_subparsers(dest="world_command", required=True, parser_class=Parser, metavar="ACTION")
    train = actions.add_parser("train", help="retrain the two judges, VAE and UNet (seeded, resumable)")
    train.add_argument(
        "--stage",
        action="append",
        choices=("detector", "second_detector", "vae", "unet"),
        help="only these stages (repeatable)",
    )
    train.add_argument("--force", action="store_true", help="retrain stages whose weights exist")
    train.add_argument("--seed", type=int, default=None, help="master seed (default 0)")
    train.add_argument("--unet-steps", type=int, default=None, help="UNet training steps (default 20000)")
    train.add_argument("--weights-dir", default=None, help="write weights here instead of the package")
    train.add_argument(
        "--unet-init", default=None, help="fine-tune this diffusers UNet folder instead of starting from random"
    )
    add_json(train)
    train.set_defaults(func=cmd_world_train)
    ev = actions.add_parser("eval", help="measure the two judges and the base model")
    ev.add_argument(
        "--model", default=None, help="'shapes' (default), a diffusers directory, an unlearn folder or models:/..."
    )
    ev.add_argument("--steps", type=int, default=None, help="sampler steps")
    ev.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    ev.add_argument(
        "--colours", type=int, default=6, help="colours per object x style combination (1-6; 6: 288 images per set)"
    )
    ev.add_argument("--report", default=None, help="folder for grids and JSON (default <home>/reports/world)")
    add_json(ev)
    ev.set_defaults(func=cmd_world_eval)
    export = actions.add_parser("export", help="write the base model as a complete diffusers directory")
    export.add_argument("dir", help="an empty or new folder")
    add_json(export)
    export.set_defaults(func=cmd_world_export)


PARSERS = (world_parser,)
