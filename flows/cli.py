"""The `lethe` command line.

Errors are one line on stderr and exit code 2 for bad input (nothing written), 1 for a failure while
working. Every command that reports takes `--json`. Heavy libraries are imported inside the commands
so that `lethe --help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class BadInput(Exception):
    """Input refused before anything is written (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line on stderr (no usage dump) and exit 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse's signature
        raise BadInput(f"{self.prog}: {message}")


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=2, sort_keys=False, default=str))


def _settings():
    from pydantic import ValidationError

    from flows.settings import load_settings

    try:
        return load_settings()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors())
        raise BadInput(f"invalid settings ({problems})") from None
    except (OSError, ValueError) as error:  # e.g. malformed lethe.toml
        raise BadInput(f"invalid settings: {error}") from None


def _writable_file(path_text: str, suffix: str) -> Path:
    """Check, before any work, that a result can be written at this path."""
    path = Path(path_text)
    if path.suffix.lower() != suffix:
        raise BadInput(f"{path}: the output must be a {suffix} file")
    if path.is_dir():
        raise BadInput(f"{path}: is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadInput(f"{path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise BadInput(f"{path}: not writable")
    return path


def _save_atomically(picture, path: Path) -> None:
    """Write beside the target and rename: a crash never leaves a half-written picture."""
    tmp = path.with_name(f".{path.name}.tmp")
    picture.save(tmp, format="PNG")
    os.replace(tmp, path)


# ---------------------------------------------------------------- generate
def cmd_generate(args) -> int:
    settings = _settings()
    out = _writable_file(args.out, ".png")
    if not 1 <= args.n <= 256:
        raise BadInput("--n must be between 1 and 256")
    steps = args.steps or settings.sample_steps
    if not 1 <= steps <= 1000:
        raise BadInput("--steps must be between 1 and 1000")
    if not 1 <= args.scale <= 32:
        raise BadInput("--scale must be between 1 and 32")
    guidance = settings.guidance_scale if args.guidance is None else args.guidance

    from unlearning.sampling import PromptError, check_prompt, generate, image_grid, load_model, upscale

    if not args.prompt.strip():
        raise BadInput("the prompt is empty")
    model = args.model or settings.base_model
    try:
        pipe = load_model(model, device=settings.resolved_device(), dtype=settings.resolved_dtype())
        check_prompt(pipe.tokenizer, args.prompt)
    except (PromptError, FileNotFoundError) as error:
        raise BadInput(str(error)) from None
    started = time.perf_counter()
    seeds = [args.seed + k for k in range(args.n)]
    images = generate(pipe, [args.prompt] * args.n, seeds, steps=steps, guidance_scale=guidance)
    picture = upscale(image_grid(images, columns=min(args.n, 8)) if args.n > 1 else image_grid(images, 1), args.scale)
    _save_atomically(picture, out)
    result = {"out": str(out), "prompt": args.prompt, "model": model, "seeds": seeds, "steps": steps,
              "guidance_scale": guidance, "seconds": round(time.perf_counter() - started, 2)}
    if args.json:
        _print_json(result)
    else:
        print(f"wrote {out} ({args.n} image{'s' if args.n > 1 else ''}, seeds {seeds[0]}..{seeds[-1]}, {result['seconds']} s)")
    return 0


# ---------------------------------------------------------------- world
def cmd_world_train(args) -> int:
    settings = _settings()
    from dataclasses import replace

    from unlearning.shapes.model import WEIGHTS_DIR
    from unlearning.shapes.train import STAGES, WorldTrainConfig, train_world

    overrides = {k: v for k, v in {"seed": args.seed, "unet_steps": args.unet_steps}.items() if v is not None}
    if any(v < 0 for v in overrides.values()) or overrides.get("unet_steps", 1) == 0:
        raise BadInput("--seed must be >= 0 and --unet-steps > 0")
    config = replace(WorldTrainConfig(), **overrides)
    weights_dir = Path(args.weights_dir) if args.weights_dir else WEIGHTS_DIR
    stages = tuple(args.stage) if args.stage else STAGES
    started = time.perf_counter()
    summary = train_world(config, weights_dir, settings.home / "world-train", stages=stages, force=args.force)
    summary["wall_seconds_this_run"] = round(time.perf_counter() - started, 1)
    summary["weights_dir"] = str(weights_dir)
    if args.json:
        _print_json(summary)
    else:
        for stage, result in summary["stages"].items():
            print(f"{stage:9s} {json.dumps(result)}")
        print(f"weights in {weights_dir} ({summary['wall_seconds_this_run']} s this run)")
    return 0


def _format_accuracy(row: dict, heads=("object", "style", "colour")) -> str:
    return "  ".join(f"{h} {row[h]:.3f}" for h in heads if h in row)


def cmd_world_eval(args) -> int:
    settings = _settings()
    if not 1 <= args.colours <= 6:
        raise BadInput("--colours must be between 1 and 6")
    steps = args.steps or settings.sample_steps
    guidance = settings.guidance_scale if args.guidance is None else args.guidance
    report_dir = Path(args.report) if args.report else settings.home / "reports" / "world"

    from unlearning.sampling import load_model
    from unlearning.shapes.train import load_detector
    from unlearning.shapes.world_eval import combination_grid, evaluate_world

    try:
        detector = load_detector()
        pipe = load_model(args.model or settings.base_model, device=settings.resolved_device(), dtype=settings.resolved_dtype())
    except FileNotFoundError as error:
        raise BadInput(str(error)) from None
    report_dir.mkdir(parents=True, exist_ok=True)
    numbers, pictures = evaluate_world(pipe, detector, steps=steps, guidance_scale=guidance, colours_per_combination=args.colours)
    for split, images in pictures.items():
        _save_atomically(combination_grid(images, args.colours), report_dir / f"grid-{split}.png")
    numbers["report"] = str(report_dir)
    (report_dir / "world-eval.json").write_text(json.dumps(numbers, indent=2) + "\n")
    if args.json:
        _print_json(numbers)
        return 0
    print(f"detector, clean renders     {_format_accuracy(numbers['detector'])}")
    print(f"detector, degraded renders  {_format_accuracy(numbers['detector_degraded'])}")
    for split, row in numbers["base"].items():
        print(f"base, {split:22s}{_format_accuracy(row)}  ({row['images']} images)")
    print(f"targets met: {json.dumps(numbers['meets_targets'])}")
    print(f"grids and JSON in {report_dir} ({numbers['wall_seconds']} s)")
    return 0


def cmd_world_export(args) -> int:
    out = Path(args.dir)
    if out.exists() and any(out.iterdir()):
        raise BadInput(f"{out}: exists and is not empty")
    from unlearning.shapes.model import export_diffusers, load_shapes_pipeline

    try:
        pipe = load_shapes_pipeline(device="cpu")  # fp32 on disk, whatever the serving dtype
    except FileNotFoundError as error:
        raise BadInput(str(error)) from None
    export_diffusers(pipe, out)
    result = {"out": str(out), "loads_with": "diffusers.StableDiffusionPipeline.from_pretrained"}
    _print_json(result) if args.json else print(f"wrote a diffusers directory to {out}")
    return 0


# ---------------------------------------------------------------- status
def cmd_status(args) -> int:
    settings = _settings()
    from unlearning.shapes.model import WEIGHTS_DIR, weights_available, weights_sha256

    size = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file()) if WEIGHTS_DIR.is_dir() else 0
    result = {
        "settings": settings.shown(),
        "shapes_world": {
            "weights_dir": str(WEIGHTS_DIR),
            "trained": weights_available(),
            "bytes": size,
            "sha256": weights_sha256() if weights_available() else None,
        },
    }
    if args.json:
        _print_json(result)
    else:
        for key, value in result["settings"].items():
            print(f"{key:22s}{value}")
        world = result["shapes_world"]
        print(f"{'shapes weights':22s}{world['weights_dir']} ({world['bytes'] / 1e6:.1f} MB, trained: {world['trained']})")
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lethe", description="Continual concept unlearning for text-to-image models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    status = commands.add_parser("status", help="show settings and the state of the embedded model")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)

    gen = commands.add_parser("generate", help="generate an image (a grid when --n > 1)")
    gen.add_argument("--prompt", required=True, help="the text prompt")
    gen.add_argument("--seed", type=int, default=0, help="seed of the first image; image k uses seed + k")
    gen.add_argument("--n", type=int, default=1, help="how many images (a grid when > 1)")
    gen.add_argument("--steps", type=int, default=None, help="sampler steps (default: settings.sample_steps)")
    gen.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    gen.add_argument("--model", default=None, help="'shapes' (default), or a diffusers directory")
    gen.add_argument("--scale", type=int, default=4, help="nearest-neighbour enlargement of the PNG (default 4)")
    gen.add_argument("--out", required=True, help="the PNG to write")
    gen.add_argument("--json", action="store_true", help="print JSON")
    gen.set_defaults(func=cmd_generate)

    world = commands.add_parser("world", help="the embedded shapes world: train, eval, export")
    world_commands = world.add_subparsers(dest="world_command", required=True, parser_class=_Parser, metavar="ACTION")
    train = world_commands.add_parser("train", help="retrain detector, VAE and UNet (seeded, resumable)")
    train.add_argument("--stage", action="append", choices=("detector", "vae", "unet"), help="only these stages (repeatable)")
    train.add_argument("--force", action="store_true", help="retrain stages whose weights exist")
    train.add_argument("--seed", type=int, default=None, help="master seed (default 0)")
    train.add_argument("--unet-steps", type=int, default=None, help="UNet training steps (default 11000)")
    train.add_argument("--weights-dir", default=None, help="write weights here instead of the package")
    train.add_argument("--json", action="store_true", help="print JSON")
    train.set_defaults(func=cmd_world_train)
    ev = world_commands.add_parser("eval", help="measure the detector and the base model")
    ev.add_argument("--model", default=None, help="'shapes' (default), or a diffusers directory")
    ev.add_argument("--steps", type=int, default=None, help="sampler steps")
    ev.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    ev.add_argument("--colours", type=int, default=3, help="colours per object x style combination (1-6)")
    ev.add_argument("--report", default=None, help="folder for grids and JSON (default <home>/reports/world)")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.set_defaults(func=cmd_world_eval)
    export = world_commands.add_parser("export", help="write the base model as a complete diffusers directory")
    export.add_argument("dir", help="an empty or new folder")
    export.add_argument("--json", action="store_true", help="print JSON")
    export.set_defaults(func=cmd_world_export)
    return parser


def _quiet_libraries() -> None:
    """Keep stderr for Lethe's own messages: libraries' load reports and bars are noise to a user."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a hub that is not there
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    try:
        args = build_parser().parse_args(argv)
        if args.command in ("generate", "world"):
            import diffusers
            import transformers

            diffusers.utils.logging.disable_progress_bar()
            transformers.utils.logging.disable_progress_bar()
        return args.func(args)
    except BadInput as error:
        message = str(error)
        print(message if message.startswith("lethe") else f"lethe: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("lethe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
