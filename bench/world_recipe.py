"""Benchmark: what limits the shapes world's styles, and which UNet training step is fastest here.

    .venv/bin/python bench/world_recipe.py step [--batch 64] [--repeats 5]
    .venv/bin/python bench/world_recipe.py roundtrip [--weights-dir DIR] [--images 240]
    .venv/bin/python bench/world_recipe.py textuse [--weights-dir DIR] [--images 96]

`step` times one training step of the world's UNet (forward, backward, AdamW; the shapes of
`unlearning/shapes/train.py:train_unet`) in float32, under bf16 autocast, and under bf16 autocast with
channels-last memory, and prints the median of `--repeats` steps with the ratio to float32 (the
recipe choice issue 11 asks to make by measurement).

`roundtrip` asks whether the VAE or the UNet loses a style: for every patterned style it renders
`--images` scenes (all objects and colours) with the renderer in the tree, passes them through the
VAE (posterior mean, decoded), and prints the reconstruction PSNR and both judges' style accuracy on
the renders and on their round trips. If the judges read the round trips as well as the renders, a
style the base draws badly is the UNet's doing, not the latent space's.

`textuse` asks whether the UNet reads a style word at all. For each pair (own style, other style) it
encodes `--images` renders of the own style, noises them at one timestep (same noise for both
captions), and prints how much larger the denoising error is under the caption naming the other
style than under the caption naming the own: error(other) / error(own) - 1. A UNet that tells two
styles apart from the text has a clearly positive gap; one that treats both words alike, about zero.

Prints Markdown tables (paste them into bench/RESULTS.md with the date and machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bench_step(batch: int, repeats: int) -> None:
    import torch
    import torch.nn.functional as F

    from unlearning.shapes import model as shapes_model

    torch.manual_seed(0)
    unet = shapes_model.build_unet().train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    latents = torch.randn(batch, 4, 16, 16)
    timesteps = torch.randint(0, 1000, (batch,))
    text = torch.randn(batch, shapes_model.MAX_PROMPT_TOKENS, shapes_model.TEXT_EMBED_DIM)

    def step(bf16: bool, channels_last: bool) -> float:
        started = time.perf_counter()
        x = latents.contiguous(memory_format=torch.channels_last) if channels_last else latents
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = unet(x, timesteps, text).sample
        loss = F.mse_loss(pred.float(), latents)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - started

    print(f"UNet training step, batch {batch}, {torch.get_num_threads()} threads, median of {repeats}\n")
    print("| variant | s / step | × float32 |")
    print("|---|---|---|")
    baseline = None
    for name, bf16, channels_last in [
        ("float32", False, False),
        ("bf16 autocast", True, False),
        ("bf16 autocast + channels-last", True, True),
    ]:
        unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for _ in range(2):  # warm-up: oneDNN picks its kernels on the first calls
            step(bf16, channels_last)
        median = statistics.median(step(bf16, channels_last) for _ in range(repeats))
        baseline = baseline or median
        print(f"| {name} | {median:.3f} | {median / baseline:.2f} |")


def bench_roundtrip(weights_dir: Path | None, images: int) -> None:
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL

    from unlearning.shapes.detector import HEADS, to_model_input
    from unlearning.shapes.render import render_batch
    from unlearning.shapes.shipped import WEIGHTS_DIR
    from unlearning.shapes.train import load_detector, load_second_detector
    from unlearning.shapes.vocabulary import COLOUR_NAMES, OBJECTS, Scene

    weights_dir = weights_dir or WEIGHTS_DIR
    vae = AutoencoderKL.from_pretrained(weights_dir / "vae").eval()
    judges = {"detector": load_detector(weights_dir), "second judge": load_second_detector(weights_dir)}
    print(f"VAE round trip of {images} renders per style (weights {weights_dir})\n")
    print("| style | PSNR dB | " + " | ".join(f"{name} renders / round trips" for name in judges) + " |")
    print("|---|---|" + "---|" * len(judges))
    for style in ("striped", "checkered", "dotted", "speckled"):
        scenes = [Scene(OBJECTS[i % len(OBJECTS)], style, COLOUR_NAMES[i % len(COLOUR_NAMES)]) for i in range(images)]
        x = to_model_input(torch.from_numpy(render_batch(scenes, seed=123)))
        with torch.no_grad():
            recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            psnr = float(10 * torch.log10(4.0 / F.mse_loss(recon, x)))
            target = HEADS["style"].index(style)
            cells = [
                "{:.3f} / {:.3f}".format(
                    *(float((judge(batch)["style"].argmax(1) == target).float().mean()) for batch in (x, recon))
                )
                for judge in judges.values()
            ]
        print(f"| {style} | {psnr:.2f} | " + " | ".join(cells) + " |")


# (own style, caption's other style): the two styles the base confuses, each with a pair it separates.
TEXT_PAIRS = (("striped", "checkered"), ("checkered", "striped"), ("striped", "dotted"), ("dotted", "striped"))
TEXT_TIMESTEPS = (25, 100, 200, 400, 600, 800)


def bench_textuse(weights_dir: Path | None, images: int) -> None:
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from unlearning.shapes import model as shapes_model
    from unlearning.shapes.detector import to_model_input
    from unlearning.shapes.render import render_batch
    from unlearning.shapes.shipped import WEIGHTS_DIR
    from unlearning.shapes.vocabulary import COLOUR_NAMES, OBJECTS, TRAIN_TEMPLATES, Scene, caption

    weights_dir = weights_dir or WEIGHTS_DIR
    vae = AutoencoderKL.from_pretrained(weights_dir / "vae").eval()
    unet = UNet2DConditionModel.from_pretrained(weights_dir / "unet").float().eval()
    encoder, tokenizer = shapes_model.load_text_encoder()
    scheduler = shapes_model.training_scheduler()
    print(f"Denoising error under the other style's caption / under the own's - 1, {images} renders ({weights_dir})\n")
    print("| timestep | " + " | ".join(f"{own} renders, '{other}'" for own, other in TEXT_PAIRS) + " |")
    print("|---|" + "---|" * len(TEXT_PAIRS))
    # Each own style's renders and latents once; only the noise changes with the timestep.
    scenes, latents = {}, {}
    for own in dict.fromkeys(own for own, _ in TEXT_PAIRS):
        scenes[own] = [
            Scene(OBJECTS[i % len(OBJECTS)], own, COLOUR_NAMES[(i // len(OBJECTS)) % len(COLOUR_NAMES)])
            for i in range(images)
        ]
        with torch.no_grad():
            x = to_model_input(torch.from_numpy(render_batch(scenes[own], seed=7)))
            latents[own] = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    template = TRAIN_TEMPLATES[0]  # "a {colour} {style} {object}"
    for timestep in TEXT_TIMESTEPS:
        cells = []
        for own, other in TEXT_PAIRS:
            with torch.no_grad():
                z0 = latents[own]
                noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(timestep))
                t = torch.full((images,), timestep)
                zt = scheduler.add_noise(z0, noise, t)
                error = {}
                for word in (own, other):
                    captions = [caption(s, template, style_word=word) for s in scenes[own]]
                    embedded = shapes_model.encode_prompts(encoder, tokenizer, captions)
                    error[word] = float(F.mse_loss(unet(zt, t, embedded).sample, noise))
            cells.append(f"{error[other] / error[own] - 1:+.3f}")
        print(f"| {timestep} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = parser.add_subparsers(dest="part", required=True)
    step = parts.add_parser("step", help="time the UNet training step per variant")
    step.add_argument("--batch", type=int, default=64)
    step.add_argument("--repeats", type=int, default=5)
    roundtrip = parts.add_parser("roundtrip", help="judge VAE round trips of renders per style")
    roundtrip.add_argument("--weights-dir", type=Path, default=None)
    roundtrip.add_argument("--images", type=int, default=240)
    textuse = parts.add_parser("textuse", help="does the UNet's denoising error depend on the style word")
    textuse.add_argument("--weights-dir", type=Path, default=None)
    textuse.add_argument("--images", type=int, default=96)
    args = parser.parse_args(argv)
    print(f"{date.today()}, {platform.machine()}, {os.cpu_count()} cores\n")
    if args.part == "step":
        bench_step(args.batch, args.repeats)
    elif args.part == "roundtrip":
        bench_roundtrip(args.weights_dir, args.images)
    else:
        bench_textuse(args.weights_dir, args.images)


if __name__ == "__main__":
    main()
