"""Benchmark: one request's cost on SD1.5- and SDXL-size models built from config (random weights, real FLOPs).

    .venv/bin/python bench/gpu_real.py [--json FILE]                     # CUDA: SD1.5 at 512 px, SDXL at 1024 px
    .venv/bin/python bench/gpu_real.py --size tiny --device cpu [--json FILE]   # every row on tiny configs
    options: --models sd15 sdxl  --repeats N (timed)  --warmup N  --threads N

Per model (SD1.5: UNet2DConditionModel (320, 640, 1280, 1280), attn2 768 wide, latents 64 = 512 px, one
CLIP-L-shape text encoder; SDXL: diffusers' SDXL UNet config, attn2 2048 wide, `text_time` added conditions,
latents 128 = 1024 px, CLIP-L- and bigG-shape text encoders, the second with a 1280 projection; both with
SD's VAE shape), the rows are:

- **edit**: seconds of one request's closed-form edit, `lethe unlearn`'s default method (continual-uce)
  through unlearning/loop.py `run_unlearning` on the pipeline (encode every prompt set and the broad Gram
  with the real-size text encoders, solve every attn2 to_k/to_v, write the delta) — the request
  "erase cat, preserve dog" with the open world's prompts; one run, as a request's edit runs once (the judged
  screen off: random weights have no judge). The
  tokenizer is the shapes world's MiniLM WordPiece at 77 tokens (no CLIP BPE offline): the encoders'
  shapes, not their vocabulary, set the cost.
- **sampling**: images/s of the gate's sampler (DDIM, `sample_steps` steps, classifier-free guidance at
  `guidance_scale`, so each step runs the UNet on 2 × batch) on bf16 weights with SDPA attention
  (`AttnProcessor2_0`), then the VAE decode; images/s = images timed / seconds timed (denoise + decode,
  both given). Text encoders are outside it (random conditions of the right shapes: the gate encodes each
  prompt once, a small share at these sizes).
- **duge step**: bench/gpu_step.py's real DUGE step (student and parent, forget and preserve batches,
  AdamW; bf16 autocast on CUDA), FLOPs counted on the meta device; MFU = FLOPs / median step seconds /
  the device's peak dense bf16 FLOP/s (`PEAK_BF16`; n/a on CPU or a device not in the table). On CUDA
  out of memory, the batch is halved until it fits (the row says which batch ran).
- **attack step**: one step of the gate's white-box attack (unlearning/evaluation/attack.py): the UNet
  forward on `AttackBudget.batch` latents under a condition that needs its gradient, the loss, the gradient
  back to the condition (bf16 weights). The text encoders' share of it is outside (as in sampling).
- **gate**: the default gate's total for a first request, estimated from the measured parts:
      gate s = images × (1 / images per s) + attack steps × attack step s
  with images = plan + sweep + attack images and attack steps from the evaluator's defaults
  (`gate_counts`: PlanSize, SweepSize, AttackBudget): the candidate's images only (the base's come from
  the warm cache), every sweep confirmation taken (an upper bound), every attack failing (a good
  candidate: each variant runs all its steps). Outside it: judging the images, and the diagnostics
  (reported, not gated).

Prints Markdown tables for bench/RESULTS.md (device, date, torch version); `--json FILE` writes the numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gpu_real_models as gpu_models  # noqa: E402  (the model shapes and their builder, bench/)

gpu_step = gpu_models.gpu_step  # its DUGE step, FLOP count and step timing

# Peak dense bf16 tensor-core FLOP/s by device name (vendor data sheets, without sparsity); the first key
# found in torch.cuda.get_device_name wins, so the more specific names come first.
PEAK_BF16 = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM
    "H200": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
}


def gate_counts() -> dict:
    """Images the default gate samples from the candidate for a first request ("erase cat, preserve dog" in
    the open world), and its attack's optimisation steps, from the evaluator's defaults (module docstring).

    - plan: every case of `open_plan` at `PlanSize()` (gate, held-out and synonym forget sets; the retained
      concept's set, at least `retain_head_images`);
    - sweep: (vocabulary prompts + variants of the target's names) × screen seeds, plus confirm prompts ×
      confirm seeds (every confirmation taken: an upper bound);
    - attack, per phrasing (`prompts` of them, the base drawing the concept on each): the base's x₀ images
      (2 × batch), the candidate and the base as asked (confirm seeds each), then per variant
      ⌈steps / check_every⌉ checks of check seeds each; steps = prompts × variants × steps.
    """
    from unlearning.evaluation.attack import AttackBudget
    from unlearning.evaluation.plan import PlanSize
    from unlearning.evaluation.sweep import SweepSize
    from unlearning.open_plan import open_plan

    plan = open_plan("cat", retained=("dog",), head_of=lambda concept: "object", size=PlanSize())
    sweep, attack = SweepSize(), AttackBudget()
    checks = math.ceil(attack.steps / attack.check_every)
    per_phrasing = 2 * attack.batch + 2 * attack.confirm_seeds + len(attack.variants) * checks * attack.check_seeds
    counts = {
        "plan_images": len(plan.cases),
        "sweep_images": (sweep.vocabulary_prompts + sweep.variants_per_concept) * sweep.screen_seeds
        + sweep.confirm_prompts * sweep.confirm_seeds,
        "attack_images": attack.prompts * per_phrasing,
        "attack_steps": attack.prompts * len(attack.variants) * attack.steps,
        "attack_batch": attack.batch,
    }
    counts["images"] = counts["plan_images"] + counts["sweep_images"] + counts["attack_images"]
    return counts


def gate_seconds(counts: dict, *, images_per_s: float, attack_step_s: float) -> float:
    """gate s = images / images per s + attack steps × attack step s (module docstring)."""
    return counts["images"] / images_per_s + counts["attack_steps"] * attack_step_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(run, device: torch.device, *, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - started)
    return times


def measure_edit(pipe) -> dict:
    """Seconds of one request's continual-uce edit through run_unlearning (module docstring)."""
    from unlearning.loop import UnlearnConfig, run_unlearning
    from unlearning.world import OpenWorld

    # random weights have no judge: the judged screen (sampling the parent on the pool prompts a round would
    # hold away; docs/erasure.md) is off here, whatever the default, and its images are not in this row
    config = UnlearnConfig(
        concept="cat", preserve=("dog",), method="continual-uce", hyper={"relocation_away_screen": 0}
    )
    base_values = {k: v.clone() for k, v in pipe.unet.state_dict().items() if ".attn2.to_" in k}
    device = pipe.unet.device
    with tempfile.TemporaryDirectory() as tmp:
        _sync(device)
        started = time.perf_counter()
        summary = run_unlearning(
            pipe,
            config,
            Path(tmp),
            prompts=OpenWorld().request_prompts(config),
            model_sha="random-from-config",
            base_values=base_values,
            progress=False,
        )
        _sync(device)
        seconds = time.perf_counter() - started
    return {"method": config.method, "seconds": seconds, "trained_tensors": summary["trained_tensors"]}


@torch.no_grad()
def measure_sampling(pipe, *, batch: int, steps: int, guidance: float, repeats: int, warmup: int) -> dict:
    """images/s of the gate's sampler: a DDIM loop with classifier-free guidance, then the VAE decode."""
    from diffusers import DDIMScheduler

    unet, vae = pipe.unet, pipe.vae
    device, dtype = unet.device, unet.dtype
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    condition = gpu_step.random_condition(unet, 2 * batch, 77, rand)  # unconditional and conditional halves
    kwargs = {"encoder_hidden_states": condition} if isinstance(condition, torch.Tensor) else condition.unet_kwargs()
    size, channels = unet.config.sample_size, unet.config.in_channels
    split = {"denoise": [], "decode": []}

    def sample() -> None:
        scheduler.set_timesteps(steps, device=device)
        latents = rand(batch, channels, size, size)
        _sync(device)
        started = time.perf_counter()
        for t in scheduler.timesteps:
            unconditional, conditional = unet(torch.cat([latents, latents]), t, **kwargs).sample.chunk(2)
            noise = unconditional + guidance * (conditional - unconditional)
            latents = scheduler.step(noise, t, latents).prev_sample
        _sync(device)
        decoding = time.perf_counter()
        images = vae.decode(latents / vae.config.scaling_factor).sample
        _sync(device)
        split["denoise"].append(decoding - started)
        split["decode"].append(time.perf_counter() - decoding)
        if not torch.isfinite(images.float()).all():
            raise RuntimeError("non-finite images")

    times = _median_seconds(sample, device, repeats=repeats, warmup=warmup)
    seconds, images = sum(times), batch * repeats
    return {
        "pixels": size * pipe.vae_scale_factor,
        "batch": batch,
        "steps": steps,
        "guidance_scale": guidance,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "denoise_s_per_batch": statistics.median(split["denoise"][warmup:]),
        "decode_s_per_batch": statistics.median(split["decode"][warmup:]),
    }


def measure_attack_step(unet, *, batch: int, repeats: int, warmup: int) -> dict:
    """Seconds of one attack step: UNet forward, loss, gradient back to the condition (module docstring)."""
    device, dtype = unet.device, unet.dtype
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    condition = gpu_step.random_condition(unet, batch, 77, rand)
    hidden = (condition if isinstance(condition, torch.Tensor) else condition.hidden).clone().requires_grad_(True)
    kwargs = {"encoder_hidden_states": hidden}
    if not isinstance(condition, torch.Tensor):
        kwargs["added_cond_kwargs"] = {"text_embeds": condition.pooled, "time_ids": condition.time_ids}
    size, channels = unet.config.sample_size, unet.config.in_channels
    noisy, target = rand(batch, channels, size, size), rand(batch, channels, size, size)
    timesteps = torch.randint(0, 1000, (batch,), generator=g).to(device)
    unet.requires_grad_(False)

    def step() -> None:
        loss = (unet(noisy, timesteps, **kwargs).sample.float() - target.float()).pow(2).mean()
        (gradient,) = torch.autograd.grad(loss, hidden)
        if not torch.isfinite(gradient).all():
            raise RuntimeError("non-finite attack gradient")

    times = _median_seconds(step, device, repeats=repeats, warmup=warmup)
    return {"batch": batch, "seconds": statistics.median(times), "seconds_all": times}


def measure_duge(unet, *, batch: int, repeats: int, warmup: int, peak: float | None) -> dict:
    """bench/gpu_step.py's DUGE step on `unet` (xattn-kv, DUGE's set), FLOPs counted on the meta device, MFU
    against `peak`; on CUDA out of memory the batch is halved until it fits."""
    from diffusers import UNet2DConditionModel

    meta = UNet2DConditionModel.from_config(unet.config).to("meta")
    while True:
        try:
            flops = gpu_step.count_flops(meta, params="xattn-kv", batch=batch, seq=77)
            row = gpu_step.measure(
                unet,
                params="xattn-kv",
                batch=batch,
                seq=77,
                steps=repeats,
                warmup=warmup,
                compiled=False,
                flops=flops,
            )
            break
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
        gc.collect()  # after the except block, whose traceback held the step's tensors
        torch.cuda.empty_cache()
        batch //= 2
    row["flops_per_step"] = flops
    row["mfu"] = flops / (row["ms_per_step"] / 1e3) / peak if peak else None
    return row


def peak_bf16(device: torch.device) -> tuple[str, float | None]:
    """(device name, its peak dense bf16 FLOP/s or None: a CPU, or a GPU not in PEAK_BF16)."""
    if device.type != "cuda":
        return gpu_step._cpu_name(), None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--models", nargs="+", choices=tuple(gpu_models.MODELS), default=list(gpu_models.MODELS))
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repeats per row")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers.models.attention_processor import AttnProcessor2_0

    from pipeline.settings import LetheSettings

    defaults = LetheSettings.model_fields
    steps, guidance = defaults["sample_steps"].default, defaults["guidance_scale"].default
    sampling_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    device_name, peak = peak_bf16(device)
    counts = gate_counts()
    models = []
    for name in args.models:
        spec = (gpu_models.TINY if args.size == "tiny" else gpu_models.MODELS)[name]
        pipe = gpu_models.build_pipeline(spec, device)
        row = {"model": name, "unet_parameters": sum(p.numel() for p in pipe.unet.parameters())}
        row["edit"] = measure_edit(pipe)
        row["duge"] = measure_duge(
            pipe.unet, batch=spec["duge_batch"], repeats=args.repeats, warmup=args.warmup, peak=peak
        )
        pipe.unet.set_attn_processor(AttnProcessor2_0())  # SDPA (the DUGE step recorded its maps)
        pipe.to(dtype=sampling_dtype)  # as the gate samples on CUDA (settings.dtype auto: bf16)
        row["sampling"] = measure_sampling(
            pipe, batch=spec["sample_batch"], steps=steps, guidance=guidance, repeats=args.repeats, warmup=args.warmup
        )
        row["attack_step"] = measure_attack_step(
            pipe.unet, batch=counts["attack_batch"], repeats=args.repeats, warmup=args.warmup
        )
        row["gate"] = {
            **counts,
            "images_per_s": row["sampling"]["images_per_s"],
            "attack_step_s": row["attack_step"]["seconds"],
            "seconds": gate_seconds(
                counts, images_per_s=row["sampling"]["images_per_s"], attack_step_s=row["attack_step"]["seconds"]
            ),
        }
        models.append(row)
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result = {
        "date": str(date.today()),
        "device": device_name,
        "peak_bf16_flops": peak,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "size": args.size,
        "sampling_dtype": str(sampling_dtype).removeprefix("torch."),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "gate_formula": "gate s = (plan + sweep + attack images) / images per s + attack steps × attack step s",
        "models": models,
    }
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def markdown(result: dict) -> str:
    mfu_note = "n/a (no peak for this device)" if result["peak_bf16_flops"] is None else "of a peak"
    lines = [
        f"One request's cost, models built from config ({result['size']} size, random weights) — {result['date']}, "
        f"{result['device']}, torch {result['torch']}, {result['cpu_threads']} CPU threads; sampling in "
        f"{result['sampling_dtype']} with SDPA; median (sampling: total) of {result['repeats']} after "
        f"{result['warmup']} warm-up",
        "",
        "| model | UNet params | edit s (encode + solve) | sampling px | images/s (batch, denoise s + decode s) "
        "| DUGE step ms (batch) | GFLOP/step | TFLOP/s | MFU | attack step ms | gate images | gate s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["models"]:
        s, d, a, g = row["sampling"], row["duge"], row["attack_step"], row["gate"]
        mfu = "n/a" if d["mfu"] is None else f"{d['mfu']:.1%}"
        lines.append(
            f"| {row['model']} | {row['unet_parameters'] / 1e6:,.1f}M | {row['edit']['seconds']:.2f} | {s['pixels']} "
            f"| {s['images_per_s']:.3f} ({s['batch']}, {s['denoise_s_per_batch']:.3f} + {s['decode_s_per_batch']:.3f})"
            f" | {d['ms_per_step']:.1f} ({d['batch']}) | {d['gflop_per_step']:,.1f} | {d['tflop_per_s']:.3f} | {mfu} "
            f"| {a['seconds'] * 1e3:.1f} | {g['images']:,} | {g['seconds']:,.1f} |"
        )
    g = result["models"][0]["gate"] if result["models"] else gate_counts()
    lines += [
        "",
        f"MFU: {mfu_note}"
        + (f" of {result['peak_bf16_flops'] / 1e12:,.0f} TFLOP/s dense bf16." if result["peak_bf16_flops"] else "."),
        f"Gate (a first request, the candidate's images; the base's cached): {result['gate_formula']}, "
        f"images = {g['plan_images']} plan + {g['sweep_images']} sweep (every confirmation) + {g['attack_images']} "
        f"attack = {g['images']}, attack steps = {g['attack_steps']} (batch {g['attack_batch']}, every attack "
        "failing).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
