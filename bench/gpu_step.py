"""Benchmark: one DUGE training step on an SD1.5-architecture UNet built from config (random weights).

    .venv/bin/python bench/gpu_step.py [--compile]                  # CUDA, SD1.5 at 512 px (latents 64×64), batch 16
    .venv/bin/python bench/gpu_step.py --device cpu --size tiny [--compile]
    .venv/bin/python bench/gpu_step.py --flops-only                 # FLOPs per step at SD1.5 size, on any machine
    options: --params xattn-kv full  --batch N  --steps N (timed)  --warmup N  --threads N  --json

The step is the training loop's (unlearning/loop.py): the real DUGE loss (unlearning/methods/duge.py:
the student and the frozen parent on a forget batch under target/anchor prompts with cross-attention
maps recorded by unlearning/attention.py, the same on a preserve batch, L2-SP to the base), AdamW,
gradient clipping, bf16 autocast on CUDA (fp32 on CPU); `--compile` adds rows with the student
`torch.compile`d, as `UnlearnConfig.compile` does (the parent stays eager, as in the loop). Text
embeddings are random (B, 77, 768) tensors: the text encoder is frozen and outside the step (an SDXL UNet,
as bench/gpu_real.py builds, gets a random `Condition`: hidden states, pooled embedding, time ids).

Reported per parameter set and mode: median ms per step; samples/s = 2 × batch / step time (a step
takes a forget and a preserve batch, each through the student and the parent); FLOPs of one step
counted with torch.utils.flop_counter.FlopCounterMode on an eager step (the compiled step does the same
maths); achieved TFLOP/s = FLOPs / median time; peak memory = torch.cuda.max_memory_allocated on CUDA,
the process's peak RSS on CPU (monotone over the run, so later rows include earlier ones).
Prints a Markdown table (and `--json` the same numbers as JSON).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import time
from datetime import date
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZES = {
    # SD1.5's UNet (859.5M parameters): the UNet2DConditionModel defaults but for these
    "sd15": dict(
        unet=dict(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
        ),
        seq=77,
        batch=16,
    ),
    "tiny": dict(
        unet=dict(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        ),
        seq=8,
        batch=2,
    ),
}


def build_step(unet, *, params: str, batch: int, seq: int, compiled: bool, seed: int = 0):
    """The loop's training step on random data, ready to call: returns step() -> dict of loss terms.
    Trains `unet` in place (pass a copy)."""
    from unlearning.attention import record_cross_attention
    from unlearning.conditioning import conditioned
    from unlearning.methods import duge
    from unlearning.methods.context import StepContext
    from unlearning.parameters import add_lora, freeze_all_but, lora_merged_weights, trainable_names

    device = next(unet.parameters()).device
    student = unet
    parent = copy.deepcopy(student).requires_grad_(False).eval()
    names = trainable_names(student, params)
    base = {n: p.detach().float().clone() for n, p in student.named_parameters() if n in names}  # θ_0 = the start
    if params == "lora":
        trained = add_lora(student, rank=4, seed=seed)
    else:
        trained = dict(zip(names, freeze_all_but(student, names)))
    trained_params = list(trained.values())
    student_maps, parent_maps = record_cross_attention(student), record_cross_attention(parent)
    optimizer = torch.optim.AdamW(trained_params, lr=1e-5, weight_decay=0.0)
    forward = torch.compile(student) if compiled else student
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    student.train()

    g = torch.Generator().manual_seed(seed)
    c, size = student.config.in_channels, student.config.sample_size

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device)

    def condition():
        return random_condition(student, batch, seq, rand)

    target_tokens = torch.zeros(batch, seq, dtype=torch.bool)
    target_tokens[:, 1:3] = True  # a two-token concept word after BOS
    anchor_tokens = torch.zeros(batch, seq, dtype=torch.bool)
    anchor_tokens[:, 1] = True
    ctx = StepContext(
        student=conditioned(forward),  # as the loop calls them: an SDXL UNet's added conditions go along
        parent=conditioned(parent),
        student_maps=student_maps,
        parent_maps=parent_maps,
        forget_noisy=rand(batch, c, size, size),
        forget_noise=rand(batch, c, size, size),
        forget_timesteps=torch.randint(0, 1000, (batch,), generator=g).to(device),
        target_embeds=condition(),
        anchor_embeds=condition(),
        empty_embeds=condition(),
        target_tokens=target_tokens.to(device),
        anchor_tokens=anchor_tokens.to(device),
        preserve_noisy=rand(batch, c, size, size),
        preserve_noise=rand(batch, c, size, size),
        preserve_timesteps=torch.randint(0, 1000, (batch,), generator=g).to(device),
        preserve_embeds=condition(),
        trained=trained,
        base_values=base,
        hyper={},
    )

    def step() -> dict[str, torch.Tensor]:
        if params == "lora":
            ctx.trained = lora_merged_weights(student)
        with autocast:
            terms = duge.loss(ctx)
        optimizer.zero_grad(set_to_none=True)
        sum(terms[k] for k in ("forget", "preserve", "regularise")).backward()
        torch.nn.utils.clip_grad_norm_(trained_params, 1.0)
        optimizer.step()
        return terms

    return step


def random_condition(unet, batch: int, seq: int, rand):
    """Random text conditioning of the right shapes for `unet` (`rand(*shape)` draws a tensor): the hidden
    states (B, T, D) alone for an SD1.x/2.x UNet; for an SDXL one (`addition_embed_type` "text_time") a
    `Condition` with the pooled embedding (its width what `add_embedding` takes beside six time ids) and
    the time ids of a square image at the UNet's size (unlearning/conditioning.py `time_ids`)."""
    from unlearning.conditioning import Condition

    hidden = rand(batch, seq, unet.config.cross_attention_dim)
    if unet.config.get("addition_embed_type") != "text_time":
        return hidden
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    pixels = unet.config.sample_size * 8  # the VAE's scale factor
    ids = torch.tensor([[pixels, pixels, 0, 0, pixels, pixels]], dtype=torch.float32, device=hidden.device)
    return Condition(hidden, rand(batch, pooled), ids.expand(batch, -1))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.machine()} ({os.cpu_count()} cores)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux: KiB


def count_flops(base_unet, *, params: str, batch: int, seq: int) -> float:
    """Model FLOPs of one step (FlopCounterMode). Attention runs the math kernel while counting, so the
    count is the same on every device and has no kernel's recomputation in it (a flash backward
    recomputes the scores; the CPU flash kernel has no formula at all). `main` counts on the meta device:
    nothing is computed, shapes only, so the SD1.5 step is counted on any machine without its memory."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    step = build_step(copy.deepcopy(base_unet), params=params, batch=batch, seq=seq, compiled=False)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        step()
    return float(counter.get_total_flops())


def measure(
    base_unet, *, params: str, batch: int, seq: int, steps: int, warmup: int, compiled: bool, flops: float
) -> dict:
    device = next(base_unet.parameters()).device
    unet = copy.deepcopy(base_unet)
    step = build_step(unet, params=params, batch=batch, seq=seq, compiled=compiled)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        started = time.perf_counter()
        terms = step()
        _sync(device)
        times.append(time.perf_counter() - started)
    if not all(torch.isfinite(v).all() for v in terms.values()):
        raise RuntimeError(f"non-finite loss terms: {terms}")
    seconds = statistics.median(times)
    row = {
        "params": params,
        "mode": "compiled" if compiled else "eager",
        "batch": batch,
        "ms_per_step": seconds * 1e3,
        "ms_per_step_all": [t * 1e3 for t in times],
        "samples_per_s": 2 * batch / seconds,
        "gflop_per_step": flops / 1e9,
        "tflop_per_s": flops / seconds / 1e12,
        "peak_memory_gib": _peak_memory_gib(device),
        "trained_parameters": sum(p.numel() for p in unet.parameters() if p.requires_grad),
    }
    del step, unet
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=tuple(SIZES), default="sd15")
    parser.add_argument(
        "--params", nargs="+", default=["xattn-kv", "full"], choices=("xattn-kv", "xattn", "full", "lora")
    )
    parser.add_argument("--batch", type=int, default=None, help="default: 16 at sd15, 2 at tiny")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per row (the compiled rows compile here)")
    parser.add_argument("--compile", action="store_true", help="also measure with the student torch.compile'd")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--flops-only", action="store_true", help="count FLOPs per step on the meta device; no timing")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")

    from diffusers import UNet2DConditionModel

    size = SIZES[args.size]
    batch = args.batch or size["batch"]
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.flops_only:
        device = torch.device("meta")
    base_unet = UNet2DConditionModel(**size["unet"]).to(device)
    meta_unet = base_unet if device.type == "meta" else UNet2DConditionModel(**size["unet"]).to("meta")
    rows = []
    for params in args.params:
        flops = count_flops(meta_unet, params=params, batch=batch, seq=size["seq"])
        if args.flops_only:
            rows.append({"params": params, "batch": batch, "gflop_per_step": flops / 1e9})
            continue
        eager = measure(
            base_unet,
            params=params,
            batch=batch,
            seq=size["seq"],
            steps=args.steps,
            warmup=args.warmup,
            compiled=False,
            flops=flops,
        )
        rows.append(eager)
        if args.compile:
            compiled = measure(
                base_unet,
                params=params,
                batch=batch,
                seq=size["seq"],
                steps=args.steps,
                warmup=args.warmup,
                compiled=True,
                flops=flops,
            )
            compiled["time_vs_eager"] = compiled["ms_per_step"] / eager["ms_per_step"]
            rows.append(compiled)
    result = {
        "date": str(date.today()),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "meta (count only)"
        if args.flops_only
        else _cpu_name(),
        "memory": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "size": args.size,
        "batch": batch,
        "latent": size["unet"]["sample_size"],
        "unet_parameters": sum(p.numel() for p in base_unet.parameters()),
        "steps": args.steps,
        "warmup": args.warmup,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.flops_only:
        print(
            "\n".join(
                [
                    f"FLOPs of one DUGE step, {args.size} UNet, batch {batch} forget + {batch} preserve "
                    "(FlopCounterMode, meta device)",
                    "",
                    "| params | GFLOP/step |",
                    "|---|---|",
                    *(f"| {row['params']} | {row['gflop_per_step']:,.1f} |" for row in rows),
                ]
            )
        )
    else:
        print(_markdown(result))
    return result


def _markdown(result: dict) -> str:
    memory = f"peak GiB ({result['memory']})"
    lines = [
        f"DUGE step, {result['size']} UNet ({result['unet_parameters'] / 1e6:.1f}M parameters, latents "
        f"{result['latent']}×{result['latent']}), batch {result['batch']} forget + {result['batch']} preserve — "
        f"{result['date']}, {result['device']}, torch {result['torch']}, {result['cpu_threads']} CPU threads; "
        f"median of {result['steps']} steps after {result['warmup']} warm-up",
        "",
        "| params | mode | ms/step (median) | compiled / eager | samples/s | GFLOP/step | TFLOP/s | "
        f"{memory} | trained parameters |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        ratio = f"{row['time_vs_eager']:.2f}" if "time_vs_eager" in row else "—"
        lines.append(
            f"| {row['params']} | {row['mode']} | {row['ms_per_step']:.1f} | {ratio} | {row['samples_per_s']:.1f} | "
            f"{row['gflop_per_step']:.2f} | {row['tflop_per_s']:.4f} | {row['peak_memory_gib']:.2f} | "
            f"{row['trained_parameters']:,} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
